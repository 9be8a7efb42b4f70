"""The model card: the label order and fingerprint that must travel with every weights file.

No TensorFlow here: the card is plain JSON beside the weights, and these tests use a dummy file.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from model.card import ModelCard, card_path, file_sha256, main
from triage.catalogue import REFERENCE_LABEL_ORDER, SLUGS


@pytest.fixture
def weights(tmp_path) -> Path:
    # Bigger than one read chunk (1 MiB), so the streaming hash is exercised across chunks.
    path = tmp_path / "best_resnet152.h5"
    path.write_bytes(bytes(range(256)) * 5000)
    return path


def make_card(weights: Path, **overrides) -> ModelCard:
    fields = dict(labels=list(REFERENCE_LABEL_ORDER), version="v1", weights_sha256=file_sha256(weights),
                  trained=True)
    fields.update(overrides)
    return ModelCard(**fields)


def test_card_lives_beside_its_weights_with_the_stem_name(tmp_path):
    assert card_path(tmp_path / "best_resnet152.h5") == tmp_path / "best_resnet152.card.json"
    assert card_path(Path("m/demo.keras")) == Path("m/demo.card.json")


def test_file_sha256_matches_hashlib_over_several_chunks(weights):
    assert file_sha256(weights) == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_save_then_load_round_trips_every_field(weights):
    card = make_card(weights, temperature=1.7, notes="n", extra={"split": "abc"})
    assert card.save(weights) == card_path(weights)
    assert ModelCard.load(weights) == card


def test_model_version_carries_the_weights_fingerprint(weights):
    card = make_card(weights)
    assert card.model_version == f"v1@{file_sha256(weights)[:12]}"


def test_missing_card_says_how_to_write_one(weights):
    with pytest.raises(FileNotFoundError) as err:
        ModelCard.load(weights)
    assert "python -m model.card --reference" in str(err.value)
    assert str(card_path(weights)) in str(err.value)


@pytest.mark.parametrize("overrides, message", [
    (dict(labels=["eczema", "psoriasis"] + list(REFERENCE_LABEL_ORDER[2:])), "unknown classes"),
    (dict(labels=["eczema", "eczema"]), "repeats"),
    (dict(preprocessing="torch"), "preprocessing"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
])
def test_invalid_cards_are_refused(weights, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_card(weights, **overrides)


def _with_unexpected_field(weights: Path) -> str:
    fields = asdict(make_card(weights))
    fields["threshold"] = 0.5
    return json.dumps(fields)


@pytest.mark.parametrize("make_text", [
    lambda weights: "{not json",
    lambda weights: json.dumps({"labels": ["eczema"], "version": "v"}),  # required fields missing
    _with_unexpected_field,
    lambda weights: json.dumps(list(REFERENCE_LABEL_ORDER)),  # a bare label list is not a card
])
def test_malformed_card_files_are_refused_naming_the_file(weights, make_text):
    card_path(weights).write_text(make_text(weights))
    with pytest.raises(ValueError, match="best_resnet152.card.json"):
        ModelCard.load(weights)


def test_cli_reference_writes_the_alphabetical_folder_order(weights, capsys):
    main(["--reference", str(weights)])
    assert capsys.readouterr().out.strip() == str(card_path(weights))
    card = ModelCard.load(weights)
    assert card.labels == list(REFERENCE_LABEL_ORDER)
    assert card.trained is True
    assert card.weights_sha256 == file_sha256(weights)
    assert (card.architecture, card.input_size, card.temperature) == ("resnet152", 224, 1.0)


def test_cli_custom_labels_and_temperature(weights):
    order = list(reversed(SLUGS))
    main([str(weights), "--labels", ",".join(order), "--temperature", "1.5", "--version", "mine"])
    card = ModelCard.load(weights)
    assert (card.labels, card.temperature, card.version) == (order, 1.5, "mine")


def test_cli_refuses_unknown_labels_and_writes_nothing(weights):
    with pytest.raises(ValueError, match="unknown classes"):
        main([str(weights), "--labels", "eczema,warts"])
    assert not card_path(weights).exists()


def test_cli_needs_an_explicit_label_order(weights):
    # Never assume an order: with neither --reference nor --labels the command must refuse.
    with pytest.raises(SystemExit):
        main([str(weights)])
    assert not card_path(weights).exists()


def test_reference_order_matches_the_design_facts():
    # DESIGN.md: a plain sort of the folder names puts "10. Warts..." second.
    assert REFERENCE_LABEL_ORDER == ("eczema", "warts_viral", "melanoma", "atopic_dermatitis", "bcc",
                                     "melanocytic_nevi", "bkl", "psoriasis_lichen_planus",
                                     "seborrheic_keratoses", "tinea_fungal")
