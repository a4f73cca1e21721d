"""What the gateway's middlewares use of the process, and nothing more.

The composition root hands them an object with these (today ``Core``, as the app's
``state.core``); the gateway never imports the services' composition to name it.
"""

from __future__ import annotations

from typing import Protocol

from nefos.config import Settings
from nefos.db.session import Database
from nefos.security.tokens import TokenCodec
from nefos.services.principal import PrincipalCache


class GatewayParts(Protocol):
    @property
    def settings(self) -> Settings: ...
    @property
    def db(self) -> Database: ...
    @property
    def tokens(self) -> TokenCodec: ...
    @property
    def principals(self) -> PrincipalCache: ...
