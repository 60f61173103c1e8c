"""The URLconf of the benchmark's http_floor figure: one view doing all a command request does but the command."""

from __future__ import annotations

from django.urls import path
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

FLOOR_PATH = "benchmark/http-floor/"


class AuthenticatedEcho(APIView):
    """Authenticates (the project's DRF authentication classes, as the command endpoint), parses the JSON
    body and answers with a small JSON object: what a command request costs before its command runs."""

    parser_classes = [JSONParser]
    permission_classes = [IsAuthenticated]

    def post(self, request: Request) -> Response:
        return Response({"fields": len(request.data)})


urlpatterns = [path(FLOOR_PATH, AuthenticatedEcho.as_view())]
