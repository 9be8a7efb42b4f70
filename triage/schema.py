"""The SQL schema. Alembic migrations are generated from, and tested against, this metadata.

Integer surrogate keys everywhere so users, reviews and an audit log can reference batches,
images and analyses later by foreign key without reshaping these tables.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, String, Text, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    images: Mapped[list["Image"]] = relationship(back_populates="batch", order_by="Image.id")


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        # A file sent twice into one batch is one image: the second is reported as a duplicate.
        UniqueConstraint("batch_id", "sha256", name="uq_images_batch_sha256"),
        CheckConstraint(f"status IN {ImageStatus.ALL!r}", name="status"),
        Index("ix_images_status_updated", "status", "updated_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id", ondelete="CASCADE"), index=True)
    display_name: Mapped[str] = mapped_column(String(1024))
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # of the bytes the client sent
    store_key: Mapped[str] = mapped_column(String(64))  # SHA-256 of the stored, metadata-free file
    size_bytes: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    format: Mapped[str] = mapped_column(String(10))
    phash: Mapped[str | None] = mapped_column(String(16), index=True)
    near_duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("images.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(String(20), default=ImageStatus.RECEIVED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(200))  # worker node holding the lease
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, onupdate=utcnow)

    batch: Mapped[Batch] = relationship(back_populates="images")
    analyses: Mapped[list["Analysis"]] = relationship(back_populates="image", order_by="Analysis.id")


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
