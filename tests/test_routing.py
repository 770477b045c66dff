"""The route table: exact hosts, wildcards, sources and atomic swaps."""

from __future__ import annotations

import pytest

from prevu.routing import Route, RouteRegistry, RouteTable, Upstream, normalize_host

UP = Upstream("127.0.0.1", 9000)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Example.COM", "example.com"),
        ("example.com:8000", "example.com"),
        ("example.com.", "example.com"),
        ("example.com.:443", "example.com"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        (" a.b ", "a.b"),
    ],
)
def test_normalize_host_strips_port_case_and_dot(raw: str, expected: str) -> None:
    assert normalize_host(raw) == expected


TABLE = RouteTable.build(
    [
        Route("exact.example.com", Upstream("10.0.0.1", 1)),
        Route("*.example.com", Upstream("10.0.0.2", 2)),
        Route("*.deep.example.com", Upstream("10.0.0.3", 3)),
        Route("deep.example.com", Upstream("10.0.0.4", 4)),
    ]
)


@pytest.mark.parametrize(
    ("host", "port"),
    [
        ("exact.example.com", 1),
        ("other.example.com", 2),
        ("a.b.example.com", 2),
        ("x.deep.example.com", 3),
        ("y.x.deep.example.com", 3),
        ("deep.example.com", 4),
        ("example.com", None),
        ("example.org", None),
        ("exact.example.com.evil.org", None),
    ],
)
def test_lookup_prefers_the_most_specific_route(host: str, port: int | None) -> None:
    route = TABLE.lookup(host)
    assert (route.upstream.port if route and route.upstream else None) == port


def test_registry_swaps_whole_tables_and_tells_listeners() -> None:
    registry = RouteRegistry()
    seen: list[int] = []
    registry.listen(lambda table: seen.append(len(table)))
    before = registry.table
    registry.replace("static", [Route("a.test", UP), Route("b.test", UP)])
    assert registry.table is not before
    assert before.lookup("a.test") is None  # old snapshots never change
    registry.put("previews", Route("c.test", UP))
    assert registry.remove("previews", "c.test") is not None
    assert registry.remove("previews", "c.test") is None
    assert seen == [0, 2, 3, 2]


def test_control_and_static_routes_win_over_previews() -> None:
    registry = RouteRegistry()
    registry.put("previews", Route("a.test", Upstream("10.0.0.9", 9)))
    registry.put("static", Route("a.test", UP))
    route = registry.lookup("A.test:8000")
    assert route is not None and route.upstream == UP
    registry.remove("static", "a.test")
    route = registry.lookup("a.test")
    assert route is not None and route.upstream == Upstream("10.0.0.9", 9)


def test_a_ready_route_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="needs an upstream"):
        Route("a.test", None)
    assert Route("a.test", None, state="building").upstream is None


def test_upstream_from_url() -> None:
    assert Upstream.from_url("http://127.0.0.1:9000") == Upstream("127.0.0.1", 9000)
    assert Upstream.from_url("http://app") == Upstream("app", 80)
    with pytest.raises(ValueError):
        Upstream.from_url("https://app")


def test_a_thousand_routes_look_up_in_constant_time_shape() -> None:
    routes = [Route(f"pr-{n}-shop.preview.test", UP) for n in range(1000)]
    table = RouteTable.build([*routes, Route("*.preview.test", Upstream("10.0.0.1", 1))])
    assert len(table.exact) == 1000
    assert table.lookup("pr-999-shop.preview.test") is routes[-1]
    fallback = table.lookup("pr-1000-shop.preview.test")
    assert fallback is not None and fallback.upstream == Upstream("10.0.0.1", 1)
