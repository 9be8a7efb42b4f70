"""One typed settings object, read from the environment, shared by every entry point.

Every variable is documented in the README's configuration table; `describe()` prints the same
table from these definitions so the two cannot drift apart unnoticed (a test compares them).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # --- where things live -------------------------------------------------------------------
    data_dir: Path = Field(Path("var"), validation_alias=_env("DERMATRIAGE_DATA_DIR"),
                           description="Folder for the default SQLite file, image store and demo model.")
    database_url: str = Field("", validation_alias=_env("DATABASE_URL"),
                              description="SQLAlchemy URL; empty means `sqlite:///<data dir>/dermatriage.db`.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=_env("REDIS_URL"),
                           description="Celery broker: transport only, never the source of truth.")
    image_store: Path | None = Field(None, validation_alias=_env("DERMATRIAGE_IMAGE_STORE"),
                                     description="Content-addressed image folder; empty means `<data dir>/images`.")
    image_store_url: str = Field("", validation_alias=_env("DERMATRIAGE_IMAGE_STORE_URL"),
                                 description="`s3://bucket/prefix` to keep images in an S3-compatible object store "
                                             "instead of the folder (credentials from the AWS_* variables).")
    s3_endpoint_url: str = Field("", validation_alias=_env("DERMATRIAGE_S3_ENDPOINT_URL"),
                                 description="Endpoint of a non-AWS S3 service (MinIO, Ceph); empty for AWS.")
    model_path: Path | None = Field(None, validation_alias=_env("DERMATRIAGE_MODEL_PATH"),
                                    description="Keras weights file (`.h5` or `.keras`) with its `.card.json` beside it; "
                                                "empty means the demo model `<data dir>/models/demo_resnet152.keras`.")
    # --- web -----------------------------------------------------------------------------------
    secret_key: str = Field("", validation_alias=_env("DERMATRIAGE_SECRET_KEY"),
                            description="Key that signs session cookies and CSRF tokens; empty means the key in "
                                        "`<data dir>/secret_key`, made at random (readable by its owner only) "
                                        "on first start and reused. There is no default key.")
    production: bool = Field(False, validation_alias=_env("DERMATRIAGE_PRODUCTION"),
                             description="Secure cookies (HTTPS), and refuse to start without a secret key of 32 "
                                         "characters or more (never making one).")
    web_host: str = Field("127.0.0.1", validation_alias=_env("DERMATRIAGE_WEB_HOST"),
                          description="Address the portal listens on (0.0.0.0 to serve other machines).")
    web_port: int = Field(8000, validation_alias=_env("DERMATRIAGE_WEB_PORT"), description="Port of the portal.")
    max_file_bytes: int = Field(50 * 1024 * 1024, validation_alias=_env("DERMATRIAGE_MAX_FILE_BYTES"),
                                description="Largest single image accepted.")
    max_files_per_request: int = Field(500, validation_alias=_env("DERMATRIAGE_MAX_FILES_PER_REQUEST"),
                                       description="Most files in one upload request.")
    max_request_bytes: int = Field(1024 * 1024 * 1024, validation_alias=_env("DERMATRIAGE_MAX_REQUEST_BYTES"),
                                   description="Largest upload request; over it the request gets a 413.")
    max_image_pixels: int = Field(50_000_000, validation_alias=_env("DERMATRIAGE_MAX_IMAGE_PIXELS"),
                                  description="Pixel cap against decompression bombs.")
    working_copy: bool = Field(True, validation_alias=_env("DERMATRIAGE_WORKING_COPY"),
                               description="The portal keeps its reduced decode of each JPEG (0.2-0.8 MB, "
                                           "until the worker has read it) so the worker need not decode the "
                                           "photograph again. Only a model whose card says `reduced` decoding "
                                           "at 224 px or less reads it: turn it off for a model decoded at "
                                           "full size (the reference), which would never use it.")
    session_hours: int = Field(12, ge=1, validation_alias=_env("DERMATRIAGE_SESSION_HOURS"),
                               description="A signed-in browser session ends after this many hours without a request.")
    login_rate_limit: str = Field("10 per minute", validation_alias=_env("DERMATRIAGE_LOGIN_RATE_LIMIT"),
                                  description="Failed sign-ins allowed from one client address, whatever the "
                                              "usernames; further attempts from there get 429 until the window "
                                              "passes (counted in Redis, so across web workers).")
    login_username_rate_limit: str = Field("5 per minute",
                                           validation_alias=_env("DERMATRIAGE_LOGIN_USERNAME_RATE_LIMIT"),
                                           description="Failed sign-ins allowed for one username from one client "
                                                       "address; further attempts for it from there get 429.")
    login_max_delay_s: float = Field(5.0, ge=0, validation_alias=_env("DERMATRIAGE_LOGIN_MAX_DELAY_S"),
                                     description="Longest delay before a failed sign-in is answered once its "
                                                 "username has had several failures (from any address); the "
                                                 "delay doubles with each one, and the username is never blocked.")
    review_audit_share: float = Field(0.10, ge=0.0, le=1.0, validation_alias=_env("DERMATRIAGE_REVIEW_AUDIT_SHARE"),
                                      description="Share of routine cases drawn at random into the review queue, "
                                                  "so negatives are checked too (0 to 1).")
    # --- worker and queue --------------------------------------------------------------------
    queue_name: str = Field("analysis", validation_alias=_env("DERMATRIAGE_QUEUE"),
                            description="Celery queue that carries analysis jobs.")
    batch_max_size: int = Field(8, validation_alias=_env("DERMATRIAGE_BATCH_MAX_SIZE"),
                                description="Largest number of images in one forward pass.")
    batch_max_wait_ms: int = Field(20, validation_alias=_env("DERMATRIAGE_BATCH_MAX_WAIT_MS"),
                                   description="Longest wait for a part-filled batch to fill before it runs.")
    decode_threads: int = Field(2, ge=0, validation_alias=_env("DERMATRIAGE_DECODE_THREADS"),
                                description="Threads that decode, check and resize a batch's images side by side "
                                            "(0 = one after another in the job's own thread).")
    prefetch: bool = Field(True, validation_alias=_env("DERMATRIAGE_PREFETCH"),
                           description="While images wait, a job goes on to further batches, claiming and preparing "
                                       "them while others are in the network, so the network never waits for the "
                                       "CPU or the database (off: one batch per job).")
    forward_lanes: int = Field(2, ge=1, le=8, validation_alias=_env("DERMATRIAGE_FORWARD_LANES"),
                               description="Batches a prefetching job keeps under way at once, each claimed, prepared "
                                           "and passed through the network in turn (1: one after another, no overlap).")
    network_threads: int = Field(0, ge=0, validation_alias=_env("DERMATRIAGE_NETWORK_THREADS"),
                                 description="Threads one forward pass uses on a CPU (0 = the worker's cores shared "
                                             "out among its forward lanes; see Throughput).")
    precision: Literal["float32", "bfloat16", "mixed_float16"] = Field(
        "float32", validation_alias=_env("DERMATRIAGE_PRECISION"),
        description="Arithmetic of the forward pass: `bfloat16` on CPUs with AVX512-BF16 or AMX, "
                    "`mixed_float16` on GPUs; results differ slightly from float32 (see Throughput).")
    task_time_limit_s: int = Field(300, validation_alias=_env("DERMATRIAGE_TASK_TIME_LIMIT_S"),
                                   description="Hard time limit of one analysis job (kept well under the visibility timeout).")
    visibility_timeout_s: int = Field(1200, validation_alias=_env("DERMATRIAGE_VISIBILITY_TIMEOUT_S"),
                                      description="Redis visibility timeout: an unacknowledged job is redelivered after this.")
    max_attempts: int = Field(3, validation_alias=_env("DERMATRIAGE_MAX_ATTEMPTS"),
                              description="Attempts before an image that keeps failing is marked failed.")
    stale_after_s: int = Field(600, validation_alias=_env("DERMATRIAGE_STALE_AFTER_S"),
                               description="An image queued or processing longer than this is re-enqueued by the reconciler.")
    consume_stall_s: int = Field(120, validation_alias=_env("DERMATRIAGE_CONSUME_STALL_S"),
                                 description="A worker with jobs waiting in its queue that receives none for this "
                                             "long exits to be restarted (0 = off).")
    reconcile_every_s: int = Field(60, validation_alias=_env("DERMATRIAGE_RECONCILE_EVERY_S"),
                                   description="How often the scheduler sends the reconcile job; /health calls "
                                               "the reconciler overdue after twice this.")
    orphan_grace_s: int = Field(3600, validation_alias=_env("DERMATRIAGE_ORPHAN_GRACE_S"),
                                description="A stored file no row refers to is deleted once it is this old "
                                            "(an upload in flight has not committed its row yet).")
    worker_metrics_port: int = Field(0, validation_alias=_env("DERMATRIAGE_WORKER_METRICS_PORT"),
                                     description="Port of the worker's Prometheus metrics (no credentials); 0 = off. "
                                                 "One port per worker process on a host.")
    worker_metrics_host: str = Field("127.0.0.1", validation_alias=_env("DERMATRIAGE_WORKER_METRICS_HOST"),
                                     description="Address the worker's metrics listen on: this machine only by "
                                                 "default (see Operations for scraping them from elsewhere).")
    gradcam: bool = Field(True, validation_alias=_env("DERMATRIAGE_GRADCAM"),
                          description="Compute and store a Grad-CAM heatmap per analysis.")
    near_duplicate_distance: int = Field(8, validation_alias=_env("DERMATRIAGE_NEAR_DUPLICATE_DISTANCE"),
                                         description="Perceptual-hash bits (of 64) within which two images are "
                                                     "flagged as near-duplicates.")
    # --- notifications of urgent cases -------------------------------------------------------
    public_url: str = Field("", validation_alias=_env("DERMATRIAGE_PUBLIC_URL"),
                            description="Address of the portal as clinicians' browsers reach it, for links sent "
                                        "out (e.g. `https://triage.example.org`); empty means "
                                        "`http://<web host>:<web port>`.")
    webhook_url: str = Field("", validation_alias=_env("DERMATRIAGE_WEBHOOK_URL"),
                             description="Where each case that opens urgent is announced: a POST of JSON (case link, "
                                         "priority, reasons; never the image or names), signed and retried until "
                                         "answered with 2xx; empty = no notifications.")
    webhook_secret: str = Field("", validation_alias=_env("DERMATRIAGE_WEBHOOK_SECRET"),
                                description="Key of the HMAC-SHA256 signature every notification carries; "
                                            "required with the webhook URL.")
    webhook_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("DERMATRIAGE_WEBHOOK_TIMEOUT_S"),
                                     description="Longest wait for the webhook to answer one attempt; an attempt "
                                                 "that times out is retried like a refusal.")
    # --- flower ------------------------------------------------------------------------------
    flower_port: int = Field(5555, validation_alias=_env("DERMATRIAGE_FLOWER_PORT"), description="Port of Flower.")
    flower_url: str = Field("http://127.0.0.1:5555/", validation_alias=_env("DERMATRIAGE_FLOWER_URL"),
                            description="Where admins' browsers reach Flower (linked from the portal's menu).")
    flower_user: str = Field("admin", validation_alias=_env("DERMATRIAGE_FLOWER_USER"),
                             description="Flower basic-auth user.")
    flower_password: str = Field("", validation_alias=_env("DERMATRIAGE_FLOWER_PASSWORD"),
                                 description="Flower basic-auth password; empty makes the run script generate one.")
    # --- quality gate (calibrated on real dermoscopic and smartphone photographs: scripts/quality_report.py) --
    min_side_px: int = Field(224, validation_alias=_env("DERMATRIAGE_MIN_SIDE_PX"),
                             description="Shorter side of the photograph (its own, not a reduced decode's) must be "
                                         "at least this many pixels: the network reads 224.")
    min_sharpness_share: float = Field(0.25, validation_alias=_env("DERMATRIAGE_MIN_SHARPNESS_SHARE"),
                                       description="Lowest sharpness: at the network's 224 px, in the sharpest "
                                                   "tenth of the picture, the share of fine detail that one more "
                                                   "pixel of blur would remove (real photographs: 0.28 and up; "
                                                   "blurred by 1% of the side: 0.21 at most). Replaces "
                                                   "DERMATRIAGE_MIN_SHARPNESS.")
    min_brightness: float = Field(40.0, validation_alias=_env("DERMATRIAGE_MIN_BRIGHTNESS"),
                                  description="Lowest mean grey level (0-255); low enough for deeply pigmented skin.")
    max_brightness: float = Field(230.0, validation_alias=_env("DERMATRIAGE_MAX_BRIGHTNESS"),
                                  description="Highest mean grey level (0-255).")
    min_relative_contrast: float = Field(0.025, validation_alias=_env("DERMATRIAGE_MIN_RELATIVE_CONTRAST"),
                                         description="Lowest standard deviation of the grey levels inside the "
                                                     "picture over their mean, clipped black and white left out "
                                                     "(blank, foggy and washed-out frames fall below it; real "
                                                     "photographs: 0.048 and up). Replaces DERMATRIAGE_MIN_CONTRAST.")
    max_clipped_dark: float = Field(0.50, validation_alias=_env("DERMATRIAGE_MAX_CLIPPED_DARK"),
                                    description="Largest share of pixels at or below grey 5 (a dermatoscope's "
                                                "black surround alone can cover 40% of a 4:3 frame).")
    max_clipped_bright: float = Field(0.10, validation_alias=_env("DERMATRIAGE_MAX_CLIPPED_BRIGHT"),
                                      description="Largest share of pixels at or above grey 250.")
    max_flat_colour_share: float = Field(0.50, validation_alias=_env("DERMATRIAGE_MAX_FLAT_COLOUR_SHARE"),
                                         description="Largest share of pixels in the 8 commonest exact colours, "
                                                     "dark and blown-out pixels left out (documents, screenshots "
                                                     "and blank frames exceed it).")
    max_colourless_share: float = Field(0.60, validation_alias=_env("DERMATRIAGE_MAX_COLOURLESS_SHARE"),
                                        description="Largest share of grey or white pixels (saturation under 5%) "
                                                    "among those bright enough to show colour and not blown out; "
                                                    "skin of every tone has colour, documents and black-and-white "
                                                    "pictures do not.")
    max_text_edge_share: float = Field(0.08, validation_alias=_env("DERMATRIAGE_MAX_TEXT_EDGE_SHARE"),
                                       description="Largest share of pixels, at 224 px, on a jump of more than 64 "
                                                   "grey levels between neighbours, as at printed text (dense dark "
                                                   "hair reaches 0.033).")
    marginal_margin: float = Field(0.15, validation_alias=_env("DERMATRIAGE_MARGINAL_MARGIN"),
                                   description="A pass this close (relative) to a threshold counts as marginal.")

    # --- risk policy -------------------------------------------------------------------------
    malignant_threshold: float = Field(0.30, validation_alias=_env("DERMATRIAGE_MALIGNANT_THRESHOLD"),
                                       description="Summed probability of the malignant classes (melanoma, BCC, "
                                                   "SCC) that makes an image high risk; reached with the "
                                                   "pre-malignant ones added, it keeps an image from routine.")
    min_confidence: float = Field(0.50, validation_alias=_env("DERMATRIAGE_MIN_CONFIDENCE"),
                                  description="Below this top probability the model abstains (priority review).")
    max_entropy: float = Field(0.75, validation_alias=_env("DERMATRIAGE_MAX_ENTROPY"),
                               description="Above this normalised entropy the model abstains (priority review).")

    @model_validator(mode="after")
    def _fill_derived_paths(self) -> "Settings":
        # Derived defaults are filled in once here so every reader sees the same resolved paths.
        data_dir = self.data_dir
        object.__setattr__(self, "image_store", self.image_store or data_dir / "images")
        object.__setattr__(self, "model_path", self.model_path or data_dir / "models" / "demo_resnet152.keras")
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'dermatriage.db'}")
        public_url = self.public_url or f"http://{self.web_host}:{self.web_port}"
        object.__setattr__(self, "public_url", public_url.rstrip("/"))
        if self.webhook_url and not self.webhook_url.startswith(("https://", "http://")):
            raise ValueError("DERMATRIAGE_WEBHOOK_URL must be an http(s) URL.")
        if self.webhook_url and not self.webhook_secret:  # an unsigned notification cannot be trusted
            raise ValueError("DERMATRIAGE_WEBHOOK_URL is set but DERMATRIAGE_WEBHOOK_SECRET is empty.")
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def env_table() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, in declaration order."""
    rows = []
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias.choices[0]
        default = field.default
        rows.append((alias, "" if default is None else str(default), field.description or ""))
    return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
