"""The SQL schema. Alembic migrations are generated from, and tested against, this metadata.

Integer surrogate keys everywhere so users, reviews and the audit log reference batches,
images and analyses by foreign key.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, BigInteger, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Text, UniqueConstraint, text)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from .manifest import AGE_RANGE, FITZPATRICK_TYPES, IDENTIFIER_MAX, NOTE_MAX, SEXES

# Fixed constraint names so SQLite batch migrations and PostgreSQL agree on what to alter.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, so every timestamp is stored as UTC without one."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class ImageStatus:
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    ANALYSED = "analysed"
    NEEDS_RESHOOT = "needs_reshoot"
    FAILED = "failed"
    ALL = (RECEIVED, QUEUED, PROCESSING, ANALYSED, NEEDS_RESHOOT, FAILED)
    FINAL = (ANALYSED, NEEDS_RESHOOT, FAILED)


class Role:
    """What a user may do; each role includes everything the roles before it may do."""
    UPLOADER = "uploader"  # upload folders, follow batches, read results
    REVIEWER = "reviewer"  # work the review queue, decide, export
    ADMIN = "admin"  # manage users, read the audit log
    ALL = (UPLOADER, REVIEWER, ADMIN)

    @classmethod
    def includes(cls, role: str, wanted: str) -> bool:
        return cls.ALL.index(role) >= cls.ALL.index(wanted)


class CaseState:
    PENDING = "pending"  # awaiting a clinician
    DECIDED = "decided"  # at least one review recorded
    SKIPPED = "skipped"  # routine and not drawn for audit: no review required
    SUPERSEDED = "superseded"  # the image was analysed again by another model version
    ALL = (PENDING, DECIDED, SKIPPED, SUPERSEDED)


class Decision:
    CONFIRM = "confirm"  # the model's top class is right
    CHANGE = "change"  # another class is right
    RESHOOT = "reshoot"  # the photograph cannot be judged: take it again
    BIOPSY = "biopsy"  # refer for biopsy
    SPECIALIST = "specialist"  # refer to a specialist
    ALL = (CONFIRM, CHANGE, RESHOOT, BIOPSY, SPECIALIST)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def only_site_id(connection) -> int:
    """The id of the deployment's one site; refuses when there are none or several."""
    ids = connection.execute(text("SELECT id FROM sites ORDER BY id LIMIT 2")).scalars().all()
    if len(ids) != 1:
        raise ValueError("This deployment has several sites (or none): name the site.")
    return ids[0]


class Site(Base):
    """A clinic sharing the portal: its batches, patients and everything under them are seen only by its
    members (triage.sites). Sites are switched off, never deleted, like users."""
    __tablename__ = "sites"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class SiteMembership(Base):
    """A user's role at one site. `users.role` = admin is the deployment-wide admin (every site);
    any other role grants only through memberships."""
    __tablename__ = "site_memberships"
    __table_args__ = (
        UniqueConstraint("user_id", "site_id", name="uq_site_memberships_user_site"),
        CheckConstraint(f"role IN {Role.ALL!r}", name="role"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    role: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class User(Base):
    __tablename__ = "users"
    __table_args__ = (CheckConstraint(f"role IN {Role.ALL!r}", name="role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(20))
    # Users are deactivated, never deleted: reviews and the audit log keep pointing at them.
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime)


class ApiToken(Base):
    """A bearer token for the JSON API. Only its SHA-256 is stored; the token is shown once."""
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))  # the token's first characters, to tell tokens apart
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime)


class UserSession(Base):
    """A signed-in browser session, held on the server so that it can be ended there (triage.sessions).
    The cookie names a random key; only its SHA-256 is stored."""
    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime)  # signed out, or ended by a change of the user


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # who uploaded
    # Whose members see it. A batch made without naming its site (tests, benchmarks) goes to the only
    # site when there is exactly one; with several that is an error, never a guess.
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True, default=lambda ctx: only_site_id(ctx.connection))

    images: Mapped[list["Image"]] = relationship(back_populates="batch", order_by="Image.id")


class Patient(Base):
    """A person as the clinic names them: by a pseudonym only (never a name), unique within the clinic.

    Age, sex and skin type are recorded per photograph (`Image`), as given at each visit. Two clinics may
    use the same pseudonym for different people, so the key is (site, external id).
    """
    __tablename__ = "patients"
    __table_args__ = (UniqueConstraint("site_id", "external_id", name="uq_patients_site_external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX))  # the clinic's pseudonym
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Lesion(Base):
    """One lesion of one patient, photographed any number of times, in any number of batches.

    The clinic's lesion id is unique within the clinic (not only within the patient), so a lesion given
    to two patients is caught as the mistake it is. A photograph without one has no lesion row.
    """
    __tablename__ = "lesions"
    # Unique within the clinic: the site is copied from the patient so the database can hold the key.
    __table_args__ = (UniqueConstraint("site_id", "external_id", name="uq_lesions_site_external_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    site_id: Mapped[int] = mapped_column(ForeignKey("sites.id"), index=True)
    patient_id: Mapped[int] = mapped_column(ForeignKey("patients.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(IDENTIFIER_MAX))
    body_site: Mapped[str | None] = mapped_column(String(20))  # a slug of triage.body_sites; may change, so no CHECK
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    patient: Mapped[Patient] = relationship()


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # A file sent twice into one batch is one image: the second is reported as a duplicate.
        UniqueConstraint("batch_id", "sha256", name="uq_images_batch_sha256"),
        CheckConstraint(f"status IN {ImageStatus.ALL!r}", name="status"),
        Index("ix_images_status_updated", "status", "updated_at"),
        CheckConstraint(f"age BETWEEN {AGE_RANGE[0]} AND {AGE_RANGE[1]}", name="age"),
        CheckConstraint(f"sex IN {SEXES!r}", name="sex"),
        CheckConstraint(f"fitzpatrick BETWEEN {FITZPATRICK_TYPES[0]} AND {FITZPATRICK_TYPES[-1]}", name="fitzpatrick"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the bytes the client sent
    store_key: Mapped[str] = mapped_column(String(64))  # SHA-256 of the stored, metadata-free file
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(10))  # as sent: JPEG, MPO (a phone's multi-picture JPEG), PNG, WEBP
    stored_format: Mapped[str] = mapped_column(String(10))  # what the store holds and serves: JPEG or PNG
    phash: Mapped[str | None] = mapped_column(String(16), index=True)
    near_duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=ImageStatus.RECEIVED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))  # worker node holding the lease
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)
    # What the clinic said about the photograph at upload (triage.manifest); all optional. Age, sex and
    # skin type are the patient's at this visit, so they live here rather than on the patient.
    lesion_id: Mapped[int | None] = mapped_column(ForeignKey("lesions.id"), index=True)
    age: Mapped[int | None] = mapped_column(Integer)
    sex: Mapped[str | None] = mapped_column(String(10))
    fitzpatrick: Mapped[int | None] = mapped_column(Integer)
    clinical_note: Mapped[str | None] = mapped_column(String(NOTE_MAX))

    batch: Mapped[Batch] = relationship(back_populates="images")
    lesion: Mapped[Lesion | None] = relationship()
    analyses: Mapped[list["Analysis"]] = relationship(back_populates="image", order_by="Analysis.id")


class RejectedFile(Base):
    """A file an upload did not take into its batch, and why: metadata only, never its bytes.

    `rejected`: the server refused it (not an image we accept, too large); `skipped`: the uploader did
    not send it (not a JPEG, PNG or WEBP file by its name) and said so. Written in the transaction that
    adds the upload's images and its audit event; the same file refused again is recorded once.
    """
    __tablename__ = "rejected_files"
    __table_args__ = (CheckConstraint("kind IN ('rejected', 'skipped')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(1024))  # the display name, as for an image
    size_bytes: Mapped[int] = mapped_column(BigInteger)  # a skipped file is never read, so it may be any size
    sha256: Mapped[str | None] = mapped_column(String(64))  # None for a file the uploader did not send
    kind: Mapped[str] = mapped_column(String(10))
    reason: Mapped[str] = mapped_column(Text)
    uploaded_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Analysis(Base):
    """The pipeline's result for one image under one model version.

    Written for every image that reached the model stage, including those the quality gate
    stopped (outcome needs_reshoot, no probabilities), so every result is explained in one place.
    """
    __tablename__ = "analyses"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version", name="uq_analyses_image_model"),
        Index("ix_analyses_priority_created", "priority", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    model_version: Mapped[str] = mapped_column(String(120))
    model_trained: Mapped[bool] = mapped_column(Boolean)
    outcome: Mapped[str] = mapped_column(String(20))  # analysed | needs_reshoot
    probabilities: Mapped[dict | None] = mapped_column(JSON)  # slug -> probability, every class
    top_class: Mapped[str | None] = mapped_column(String(40))
    confidence: Mapped[float | None] = mapped_column(Float)
    top3: Mapped[list | None] = mapped_column(JSON)  # [[slug, probability], ...]
    risk_level: Mapped[str | None] = mapped_column(String(10))
    priority: Mapped[str] = mapped_column(String(10))
    reasons: Mapped[list] = mapped_column(JSON)
    recommendations: Mapped[list] = mapped_column(JSON)
    quality: Mapped[dict] = mapped_column(JSON)  # every check with value, threshold, pass, message
    thresholds: Mapped[dict] = mapped_column(JSON)  # the risk-policy settings in force
    timings: Mapped[dict] = mapped_column(JSON)  # milliseconds per stage
    heatmap_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    image: Mapped[Image] = relationship(back_populates="analyses")


# The review queue's order, after the state (and a filter) in each of its indexes: triage/reviews.py.
QUEUE_KEY_COLUMNS = ("patient_rank", "patient_since", "patient_key", "lesion_rank", "lesion_key",
                     "priority_rank", "received_at", "id")


class ReviewCase(Base):
    """An analysis's place in the review queue: one row per analysed image and model version.

    The queue's sort key and its filters are copied here from the analysis and image so that a page of
    the queue is one range scan of one index, however long it is. The queue works by patient: the key
    is the patient's (rank, since, key), then the lesion's (rank, key), then the photograph's own
    (priority rank, upload time, id); see triage/reviews.py `regroup`, which keeps the patient and
    lesion parts right whenever a case of the patient opens or changes state.
    """
    __tablename__ = "review_cases"
    __table_args__ = (
        CheckConstraint(f"state IN {CaseState.ALL!r}", name="state"),
        Index("ix_review_cases_queue", "state", *QUEUE_KEY_COLUMNS),
        Index("ix_review_cases_batch_queue", "batch_id", "state", *QUEUE_KEY_COLUMNS),
        Index("ix_review_cases_class_queue", "top_class", "state", *QUEUE_KEY_COLUMNS),
        Index("ix_review_cases_reviewer_queue", "reviewer_id", "state", *QUEUE_KEY_COLUMNS),
        Index("ix_review_cases_lesion", "patient_key", "lesion_key", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), unique=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"))
    priority: Mapped[str] = mapped_column(String(10))
    priority_rank: Mapped[int] = mapped_column(Integer)  # 0 urgent, 1 review, 2 routine
    top_class: Mapped[str | None] = mapped_column(String(40))
    received_at: Mapped[datetime] = mapped_column(DateTime)  # when the image was uploaded: its age
    state: Mapped[str] = mapped_column(String(12))
    audit_sample: Mapped[bool] = mapped_column(Boolean, default=False)  # routine, drawn for audit
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))  # of the latest decision
    decision: Mapped[str | None] = mapped_column(String(20))  # the latest decision
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The queue by patient (migration 0007). A photograph without a lesion is its own lesion of an
    # unnamed patient: keys 0, and ranks and time its own, so it sorts exactly as it did before.
    patient_key: Mapped[int] = mapped_column(Integer, default=0)  # patients.id, 0: unnamed
    lesion_key: Mapped[int] = mapped_column(Integer, default=0)  # lesions.id, 0: no lesion
    # Over the patient's cases in this case's state: the most urgent rank and the oldest upload time.
    patient_rank: Mapped[int] = mapped_column(Integer)
    patient_since: Mapped[datetime] = mapped_column(DateTime)
    lesion_rank: Mapped[int] = mapped_column(Integer)  # the most urgent rank of the lesion's cases in this state


class Notification(Base):
    """A case that opened urgent, to be announced to the deployment's webhook: an outbox row.

    Written in the worker's transaction that opens the case, so no urgent case goes unannounced, and
    delivered after the commit, again and again with backoff until the receiver acknowledges it.
    `due_at` is when the next attempt may start (None once delivered); an attempt under way holds it
    a little past its timeout, so two deliveries of one notification never overlap.
    """
    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("review_cases.id", ondelete="CASCADE"), unique=True)
    payload: Mapped[dict] = mapped_column(JSON)  # what is sent, fixed when the case opens: no image, no names
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    due_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Review(Base):
    """A clinician's decision on an analysis. Kept beside the model's output, never over it;
    a later decision on the same analysis is a new row, so the history stays."""
    __tablename__ = "reviews"
    __table_args__ = (CheckConstraint(f"decision IN {Decision.ALL!r}", name="decision"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    analysis_id: Mapped[int] = mapped_column(ForeignKey("analyses.id", ondelete="CASCADE"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    decision: Mapped[str] = mapped_column(String(20))
    diagnosis: Mapped[str | None] = mapped_column(String(40))  # the class the reviewer settles on, if any
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # One decision per lesion: a decision on one photograph's case settles the lesion's other pending
    # cases with a review each, pointing here at the decision they follow. None: decided on this photograph.
    settled_by_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"))


class AuditEvent(Base):
    """Append-only: who did what and when. The app only inserts; the database refuses updates and
    deletes (triggers in migration 0002)."""
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)  # None: the system
    action: Mapped[str] = mapped_column(String(40), index=True)
    target_type: Mapped[str | None] = mapped_column(String(20))
    target_id: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    ip: Mapped[str | None] = mapped_column(String(45))
    # The site whose data the event concerns (its admins read it); None: the deployment's (global admins).
    # No foreign key, like target_id: the log outlives what it names and is never rewritten.
    site_id: Mapped[int | None] = mapped_column(Integer, index=True)
