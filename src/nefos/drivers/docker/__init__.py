"""The docker driver: containers through the Docker Engine API (Docker or Podman)."""

from nefos.drivers.docker.driver import DockerDriver

__all__ = ["DockerDriver"]
