"""Wire types of ``/analytics`` (the request log's figures)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class _Window(BaseModel):
    scope: Literal["organisation", "platform"]
    organisation_id: str | None = Field(None, description="Null for the platform's traffic.")
    start: str = Field(description="ISO 8601 UTC, inclusive.")
    end: str = Field(description="ISO 8601 UTC, exclusive.")
    period: str | None = Field(None, description="1h, 24h, 7d or 30d; null with start/end.")


class Latency(BaseModel):
    avg: float | None = Field(description="Milliseconds; null without requests.")
    p50: float | None = Field(description="Nearest-rank percentiles, in milliseconds.")
    p95: float | None
    p99: float | None
    sampled_every: int = Field(
        description="1: ranked over every request; k: over every k-th (windows of more "
        "than 200,000 requests)."
    )


class TopEndpoint(BaseModel):
    method: str = Field(examples=["GET"])
    route: str = Field(examples=["/containers/{container_id}"])
    requests: int
    error_rate: float = Field(description="5xx, % of the endpoint's requests.")


class AnalyticsOverview(_Window):
    total_requests: int
    requests_per_second: float = Field(description="Mean over the window.")
    errors: int = Field(description="Responses 5xx.")
    client_errors: int = Field(description="Responses 4xx.")
    error_rate: float = Field(description="5xx, % of all requests.")
    client_error_rate: float = Field(description="4xx, % of all requests.")
    latency_ms: Latency
    unique_users: int
    unique_ips: int
    bytes_in: int = Field(description="Request bodies, bytes.")
    bytes_out: int = Field(description="Response bodies, bytes.")
    top_endpoints: list[TopEndpoint] = Field(description="The ten busiest.")


class TrafficBucket(BaseModel):
    timestamp: str = Field(description="The bucket's start (ISO 8601 UTC).")
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int


class AnalyticsTraffic(_Window):
    interval: Literal["minute", "hour", "day"]
    step_seconds: int
    total_requests: int
    buckets: list[TrafficBucket] = Field(description="Every bucket of the window, oldest first.")


class EndpointPerformance(BaseModel):
    method: str
    route: str
    requests: int
    avg_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    errors: int
    client_errors: int
    error_rate: float = Field(description="5xx, %.")
    client_error_rate: float = Field(description="4xx, %.")


class AnalyticsPerformance(_Window):
    sampled_every: int = Field(
        description="The percentiles' sample: 1 is every request, k every k-th."
    )
    endpoints: list[EndpointPerformance] = Field(description="The busiest first.")


class GeographyItem(BaseModel):
    country: str | None = Field(
        None, description="ISO 3166 code (by country; null: not in the GeoIP database)."
    )
    network: str | None = Field(None, description="The clients' /24 or /48 (by network).")
    requests: int
    unique_ips: int
    error_rate: float = Field(description="5xx, %.")


class AnalyticsGeography(_Window):
    grouped_by: Literal["country", "network"] = Field(
        description="country when a GeoIP database is configured, else network."
    )
    items: list[GeographyItem] = Field(description="The busiest first.")
