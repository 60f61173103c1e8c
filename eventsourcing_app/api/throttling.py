"""Throttling of command requests, at EVENTSOURCING["COMMAND_THROTTLE_RATE"] per user (or IP)."""

from __future__ import annotations

from typing import Any

from rest_framework.throttling import SimpleRateThrottle

from ..conf import es_settings


class CommandRateThrottle(SimpleRateThrottle):
    scope = "eventsourcing_commands"

    def get_rate(self) -> str | None:
        # Read when called, so override_settings reaches it.
        return es_settings.COMMAND_THROTTLE_RATE

    def allow_request(self, request: Any, view: Any) -> bool:
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Any, view: Any) -> str:
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
