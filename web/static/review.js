// Keyboard shortcuts of the case page. Every shortcut is an element carrying data-key (a decision
// button, the next/previous link, the heatmap switch), so the page itself is the list of keys.
// Keys typed into the note or a list are left alone; Escape leaves the note.
(function () {
  "use strict";
  var form = document.getElementById("decision-form");
  var diagnosis = document.getElementById("diagnosis");
  var note = document.getElementById("note");
  var hint = document.getElementById("decision-hint");
  var confirmHint = document.getElementById("confirm-hint");
  var ALIASES = {ArrowRight: "n", ArrowLeft: "p"};

  function typing(target) {
    return target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT" && target.type === "text" ||
                      target.tagName === "SELECT");
  }

  function chooseClass(digit) {
    var option = diagnosis.querySelector('option[data-key="' + digit + '"]');
    if (option) { diagnosis.value = option.value; hint.hidden = true; confirmHint.hidden = true; }
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) { return; }
    if (event.key === "Escape") { document.activeElement.blur(); return; }
    if (typing(event.target)) { return; }
    var key = ALIASES[event.key] || event.key.toLowerCase();
    if (/^[0-9]$/.test(key)) { chooseClass(key); event.preventDefault(); return; }
    if (key === "t") { note.focus(); event.preventDefault(); return; }
    var target = document.querySelector('[data-key="' + key + '"]:not(option)');
    if (!target) { return; }
    event.preventDefault();
    target.click();  // a decision button submits the form, where a change is checked
  });

  form.addEventListener("submit", function (event) {
    // Decisions the server would refuse; say why here instead of on an error page. Focus stays on the
    // page, so the number keys and then d carry on as the hints say.
    var submitter = event.submitter;
    var modelClass = diagnosis.getAttribute("data-model-class");
    if (submitter && submitter.value === "change" && (!diagnosis.value || diagnosis.value === modelClass)) {
      event.preventDefault();
      hint.hidden = false;
      return;
    }
    if (submitter && submitter.value === "confirm" && diagnosis.value && diagnosis.value !== modelClass) {
      event.preventDefault();
      confirmHint.hidden = false;
      return;
    }
    if (form.getAttribute("data-sent")) { event.preventDefault(); return; }  // one decision per key press
    form.setAttribute("data-sent", "1");
  });
}());
