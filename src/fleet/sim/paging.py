"""Spring Data paging: `page`/`size`/`sort` query parameters in, a HAL page out.

Every collection the emulator lists is kept in creation order, so sorting by `createdAt` is
reading it forwards or backwards, and a page costs O(size), not a sort of the whole collection.
Jobs sorted by `updatedAt` come from the world's job index instead (`index.py`).

A sort on a property the collection cannot sort by is dropped silently, as Spring Data REST's
`JacksonMappingAwareSortTranslator` drops every property that is not in the entity's JSON:
the answer is 200 and unsorted (creation order), never 400.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterator

    from starlette.datastructures import QueryParams

    from fleet.sim.records import JsonObject

T_co = TypeVar("T_co", covariant=True)

DEFAULT_SIZE = 20  # Spring Data's default page size
MAX_SIZE = 1000  # Spring Data REST's default cap


class Listing(Protocol[T_co]):
    """What a page can be cut from: a list, or the values of an insertion-ordered dict."""

    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[T_co]: ...
    def __reversed__(self) -> Iterator[T_co]: ...


@dataclass(frozen=True, slots=True)
class PageRequest:
    page: int
    size: int
    descending: bool
    sort_by: str | None = None  # the property named by `sort`, if any

    @property
    def offset(self) -> int:
        return self.page * self.size

    def unsorted(self) -> PageRequest:
        """The same page with its sort dropped: creation order."""
        return dataclasses.replace(self, descending=False, sort_by=None)

    def window(self, items: Listing[T_co]) -> list[T_co]:
        start = self.page * self.size
        if isinstance(items, list):  # slicing a list skips the offset without iterating it
            total = len(items)
            if self.descending:
                high = max(total - start, 0)
                return items[max(high - self.size, 0) : high][::-1]
            return items[start : start + self.size]
        ordered = reversed(items) if self.descending else iter(items)
        return list(islice(ordered, start, start + self.size))


def page_request(
    params: QueryParams, *, sortable: frozenset[str] = frozenset({"createdAt"})
) -> PageRequest:
    """Read paging parameters the lenient way Spring does: bad numbers fall back to defaults,
    and the first `sort` (`prop[,asc|desc]`, repeatable) on a `sortable` property wins."""
    page = _int(params.get("page"), 0)
    size = _int(params.get("size"), DEFAULT_SIZE)
    descending = False
    sort_by = None
    for sort in params.getlist("sort"):
        name, _, direction = sort.partition(",")
        if name.strip() in sortable:
            sort_by = name.strip()
            descending = direction.strip().lower() == "desc"
            break
    return PageRequest(
        page=max(page, 0),
        size=min(size, MAX_SIZE) if size > 0 else DEFAULT_SIZE,
        descending=descending,
        sort_by=sort_by,
    )


def hal_page(
    collection: str, items: list[JsonObject], request: PageRequest, total: int
) -> JsonObject:
    return {
        "_embedded": {collection: items},
        "page": {
            "size": request.size,
            "totalElements": total,
            "totalPages": -(-total // request.size),
            "number": request.page,
        },
    }


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
