"""Service configuration, only from environment variables (12-factor), prefix ``CRM_``."""

from __future__ import annotations

from typing import Literal

from crm_contracts.events.common import Currency
from pydantic import Field, SecretStr, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_CURRENCY: TypeAdapter[str] = TypeAdapter(Currency)


class ServiceSettings(BaseSettings):
    """Settings every service shares; a service subclasses it to add its own."""

    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore", frozen=True)

    service_name: str = Field(description="Short name of the service, e.g. 'leads'.")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: str | None = None
    topic_prefix: str = Field(
        default="", pattern=r"^[A-Za-z0-9._\-]*$", description="Prepended to every topic name."
    )
    kafka_create_topics: bool = Field(
        default=True, description="Create the service's topics at start if they are missing."
    )
    kafka_topic_partitions: int = Field(default=3, ge=1, le=1000)
    kafka_replication_factor: int = Field(
        default=1, ge=1, le=10, description="Replicas of each topic the service creates; use 3 in production."
    )
    kafka_min_insync_replicas: int = Field(
        default=1,
        ge=1,
        le=10,
        description="min.insync.replicas of each topic the service creates: with acks=all a write "
        "counts once this many replicas have it; use 2 with 3 replicas.",
    )
    kafka_topic_retention_ms: int = Field(
        default=-1,
        ge=-1,
        description="retention.ms of the event topics the service creates; -1 keeps every event, "
        "which a read-model rebuild needs (it replays each topic from offset 0).",
    )
    kafka_dlq_retention_ms: int = Field(
        default=30 * 24 * 3600 * 1000,
        ge=-1,
        description="retention.ms of the dead-letter topics (<topic>.dlq) the service creates: how "
        "long a parked message can still be replayed (default 30 days; -1 keeps them).",
    )
    consumer_group: str | None = Field(default=None, description="Defaults to 'crm-<service>'.")

    mongo_url: SecretStr = SecretStr("mongodb://127.0.0.1:27017/?directConnection=true")
    mongo_database: str | None = Field(default=None, description="Defaults to 'crm_<service>'.")
    mongo_server_selection_timeout_ms: int = Field(
        default=5000,
        ge=100,
        le=120_000,
        description="How long an operation waits for a reachable MongoDB before it fails "
        "(an HTTP request then answers 503 with Retry-After).",
    )

    http_host: str = "0.0.0.0"  # containers listen on all interfaces
    http_port: int = Field(default=8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_outage_summary_seconds: float = Field(
        default=60.0,
        gt=0,
        description="During an outage, how often a component summarises its held-back failures.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Largest accepted request body.")
    max_import_bytes: int = Field(
        default=200 * 1024 * 1024,
        ge=1024,
        description="Largest accepted import upload (POST /imports/...), streamed in chunks.",
    )
    import_chunk_rows: int = Field(
        default=500, ge=1, le=5000, description="Rows of an import applied together in one transaction."
    )
    api_tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated 'token:scope' pairs (scope read or write); unset disables auth.",
    )

    company_currency: str = Field(
        default="EUR",
        description="The organisation's corporate currency (ISO 4217, e.g. EUR or USD): the currency of "
        "new opportunities, products, campaigns and import rows that name none, and of the money "
        "columns of the win/loss and lead-source reports. Every service must be given the same one.",
    )

    outbox_batch_size: int = Field(default=200, ge=1, le=5000)
    outbox_poll_seconds: float = Field(default=1.0, gt=0)
    outbox_linger_seconds: float = Field(
        default=0.02, ge=0, le=1, description="How long the relay lets commits gather into one batch."
    )
    consumer_batch_size: int = Field(
        default=100, ge=1, le=1000, description="Most events applied together in one transaction."
    )
    consumer_batch_wait_ms: int = Field(
        default=100, ge=1, le=10_000, description="How long a fetch waits for events when none are buffered."
    )
    consumer_max_attempts: int = Field(default=5, ge=1, description="Tries before a dead letter.")
    consumer_retry_backoff_seconds: float = Field(default=0.2, ge=0)
    jobs_lease_seconds: float = Field(
        default=30.0,
        ge=1,
        description="How long a replica owns a background job without progress before another takes over.",
    )
    jobs_poll_seconds: float = Field(default=1.0, gt=0, description="How often idle runners look for jobs.")
    lag_interval_seconds: float = Field(default=5.0, gt=0, description="How often consumer lag is measured.")

    @field_validator("company_currency")
    @classmethod
    def _iso_4217(cls, value: str) -> str:
        try:
            return _CURRENCY.validate_python(value)
        except ValidationError:
            raise ValueError(
                f"CRM_COMPANY_CURRENCY must be an ISO 4217 code of three capital letters "
                f"(e.g. EUR, USD), not {value!r}"
            ) from None

    @model_validator(mode="after")
    def _sasl_needs_credentials(self) -> ServiceSettings:
        if self.kafka_security_protocol.startswith("SASL") and not self.kafka_sasl_username:
            raise ValueError("CRM_KAFKA_SASL_USERNAME is required with a SASL security protocol")
        return self

    @model_validator(mode="after")
    def _min_insync_within_replicas(self) -> ServiceSettings:
        if self.kafka_min_insync_replicas > self.kafka_replication_factor:
            raise ValueError(
                f"CRM_KAFKA_MIN_INSYNC_REPLICAS ({self.kafka_min_insync_replicas}) cannot exceed "
                f"CRM_KAFKA_REPLICATION_FACTOR ({self.kafka_replication_factor}): every acks=all "
                "write would be refused"
            )
        return self

    @property
    def database_name(self) -> str:
        return self.mongo_database or f"crm_{self.service_name}"

    @property
    def group_id(self) -> str:
        return self.consumer_group or f"crm-{self.service_name}"

    def topic(self, name: str) -> str:
        """The physical topic name of a logical one (prefix lets test runs and tenants coexist)."""
        return self.topic_prefix + name
