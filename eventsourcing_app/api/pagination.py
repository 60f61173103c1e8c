"""Cursor pagination on the global position: stable under concurrent appends."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class PositionCursorPagination(CursorPagination):
    ordering = "position"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class StreamCursorPagination(CursorPagination):
    ordering = "stream_id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000
