"""The download engine against a real, hostile HTTP server on 127.0.0.1 (tests/http_server.py).

Slow routes (trickle, silent, endless) run concurrently in one fetch_many, so the file takes a
few seconds. Elapsed-time checks are sanity bounds (the budget is enforced), not benchmarks.
"""

from __future__ import annotations

import dataclasses
import socket
import tracemalloc
import uuid
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from pipeline.download import (
    DownloadOptions,
    Fetcher,
    parse_retry_after,
    robots_opt_out,
    user_agent,
    validate_url,
)
from pipeline.netguard import AddressPolicy
from pipeline.schema import Reason
from tests.http_server import BLOCKED_HOST, EXPECTED, IMAGES, TABLE_OPTIONS, TOKEN

# Enough slack for a loaded 2-core machine; a fetch that ignored the budget would take minutes.
SLACK = 1.0
JPEG = IMAGES["/img/jpeg.jpg"][0]


def reason(result):
    return None if result.rejection is None else result.rejection.reason


def fresh(path: str) -> str:
    """The path with a unique query, so the server's per-URL counters start at zero."""
    sep = "&" if "?" in path else "?"
    return f"{path}{sep}t={uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def fetcher():
    with Fetcher(TABLE_OPTIONS) as f:
        yield f


def fetch_one(options: DownloadOptions, url):
    with Fetcher(options) as f:
        return f.fetch_many([url])[0]


# --- the route table, all at once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def table_results(http_server, fetcher):
    results = fetcher.fetch_many([http_server.route_url(route) for route in EXPECTED])
    return dict(zip(EXPECTED, results))


@pytest.mark.parametrize("route", EXPECTED, ids=lambda r: f"{r.host}{r.path}")
def test_route_table(route, table_results, http_server):
    result = table_results[route]
    assert reason(result) == route.reason, result.rejection
    assert result.http_status == route.http_status
    assert result.seconds <= TABLE_OPTIONS.timeout + SLACK
    if route.reason is None:
        assert result.data and result.nbytes == len(result.data)
    else:
        assert result.data is None and result.rejection.message


def test_images_arrive_byte_for_byte(table_results, http_server):
    for route, result in table_results.items():
        if route.path in IMAGES and route.host != BLOCKED_HOST:
            assert result.data == IMAGES[route.path][0]
            assert result.final_url == http_server.url(route.path)


@pytest.mark.parametrize("path", ["/hang/trickle", "/hang/silent", "/hang/endless"])
def test_hanging_servers_are_cut_at_the_budget(path, table_results):
    (result,) = [r for route, r in table_results.items() if route.path == path]
    assert reason(result) == Reason.TIMEOUT
    assert TABLE_OPTIONS.timeout - 0.1 <= result.seconds <= TABLE_OPTIONS.timeout + SLACK


def test_content_encodings_are_decoded(table_results):
    encoded = [r for route, r in table_results.items() if route.path.startswith("/encoded/")]
    assert len(encoded) == 3
    assert all(r.data == JPEG for r in encoded)


def test_redirect_chain_ends_at_the_image(table_results, http_server):
    (result,) = [r for route, r in table_results.items() if route.path == "/redirect/chain/3"]
    assert result.final_url == http_server.url("/img/jpeg.jpg")
    assert result.data == JPEG


# --- the address guard -------------------------------------------------------------------------------


def test_other_loopback_address_refused_directly_and_after_a_redirect(fetcher, http_server):
    direct, redirected = fetcher.fetch_many(
        [http_server.url(fresh("/img/jpeg.jpg"), host=BLOCKED_HOST), http_server.url(fresh("/redirect/blocked"))]
    )
    for result in (direct, redirected):
        assert reason(result) == Reason.BLOCKED_ADDRESS
        assert BLOCKED_HOST in result.rejection.message
        assert result.final_url.startswith(f"http://{BLOCKED_HOST}:")
    assert redirected.http_status == 302


def test_without_the_guard_127_0_0_2_would_be_connected_to(http_server):
    # Opening all of 127.0.0.0/8 lets the connect happen; nothing listens on 127.0.0.2, so it
    # is refused by the kernel. BLOCKED_ADDRESS above therefore came before any connect().
    options = dataclasses.replace(TABLE_OPTIONS, allow_networks=("127.0.0.0/8",))
    result = fetch_one(options, http_server.url("/img/jpeg.jpg", host=BLOCKED_HOST))
    assert reason(result) == Reason.CONNECTION_ERROR


def test_default_options_refuse_loopback_by_address_and_by_name(http_server):
    path = fresh("/img/jpeg.jpg")
    with Fetcher(DownloadOptions(timeout=2.0)) as f:
        by_address, by_name = f.fetch_many([http_server.url(path), http_server.url(path, host="localhost")])
    assert reason(by_address) == Reason.BLOCKED_ADDRESS
    assert "loopback address 127.0.0.1" in by_address.rejection.message
    assert reason(by_name) == Reason.BLOCKED_ADDRESS  # refused by the resolver, after DNS
    assert "localhost resolves only to refused addresses" in by_name.rejection.message
    assert http_server.hits(path) == []


def test_allowed_name_connects_to_the_allowed_address(http_server):
    result = fetch_one(TABLE_OPTIONS, http_server.url("/img/png.png", host="localhost"))
    assert reason(result) is None and result.data == IMAGES["/img/png.png"][0]


@pytest.mark.parametrize(
    "address, refused_as",
    [
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("127.0.0.1", None),  # opened by allow_networks
        ("::ffff:127.0.0.1", None),  # the same destination, IPv4-mapped
        ("127.0.0.2", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.1", "private"),
        ("fc00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata endpoints
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "not globally routable"),
        ("::ffff:10.0.0.1", "private"),
        ("64:ff9b::a00:1", "private"),  # NAT64 to 10.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 to 10.0.0.1
    ],
)
def test_address_policy(address, refused_as):
    why = AddressPolicy(["127.0.0.1/32"]).refusal(address)
    if refused_as is None:
        assert why is None
    else:
        assert why == f"{refused_as} address {address}"


def test_malformed_options_fail_early():
    for bad in ({"allow_networks": ("not-a-cidr",)}, {"timeout": 0}, {"retries": -1}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            DownloadOptions(**bad)
    assert DownloadOptions(allow_networks=["10.0.0.0/8"]).allow_networks == ("10.0.0.0/8",)


def test_connection_refused(fetcher):
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = fetcher.fetch_many([f"http://127.0.0.1:{port}/x.jpg"])[0]
    assert reason(result) == Reason.CONNECTION_ERROR
    assert result.http_status is None


def test_connect_that_never_completes_is_cut_at_the_budget():
    # A listener that never accepts: once its backlog is full the kernel leaves new SYNs
    # unanswered, so connect() hangs. Each attempt gets its share of the budget, then a retry.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):
                filler = socket.socket()
                fillers.append(filler)
                filler.settimeout(0.3)
                try:
                    filler.connect(("127.0.0.1", port))
                except TimeoutError:
                    break
            else:
                pytest.skip("this kernel completes connections beyond a full backlog")
            options = dataclasses.replace(TABLE_OPTIONS, timeout=1.5)
            result = fetch_one(options, f"http://127.0.0.1:{port}/x.jpg")
        finally:
            for filler in fillers:
                filler.close()
    assert reason(result) == Reason.TIMEOUT and result.http_status is None
    assert result.seconds <= options.timeout + SLACK


# --- retries ----------------------------------------------------------------------------------------------


def test_retries_retry_and_give_up(fetcher, http_server):
    recovers, always, final = (fresh(p) for p in ("/flaky/503?failures=2", "/status/503", "/status/404"))
    results = fetcher.fetch_many([http_server.url(p) for p in (recovers, always, final)])
    assert reason(results[0]) is None and results[0].data == JPEG
    assert len(http_server.hits(recovers)) == 3
    assert reason(results[1]) == Reason.HTTP_ERROR and results[1].http_status == 503
    assert len(http_server.hits(always)) == TABLE_OPTIONS.retries + 1
    assert reason(results[2]) == Reason.HTTP_ERROR and results[2].http_status == 404
    assert len(http_server.hits(final)) == 1  # 4xx other than 429 is final


def test_no_retries_means_one_attempt(http_server):
    path = fresh("/status/503")
    result = fetch_one(dataclasses.replace(TABLE_OPTIONS, retries=0), http_server.url(path))
    assert result.http_status == 503 and len(http_server.hits(path)) == 1


def test_retry_after_is_honoured(fetcher, http_server):
    path = fresh("/flaky/429?failures=1&retry_after=1")
    result = fetcher.fetch_many([http_server.url(path)])[0]
    assert reason(result) is None and result.http_status == 200
    first, second = http_server.hits(path)
    assert second.at - first.at >= 0.9  # waited as told, not a jittered fraction of a second


def test_retry_after_beyond_the_budget_stops_at_once(fetcher, http_server):
    path = fresh("/retry-after/3600")
    result = fetcher.fetch_many([http_server.url(path)])[0]
    assert reason(result) == Reason.HTTP_ERROR and result.http_status == 429
    assert "Retry-After" in result.rejection.message
    assert len(http_server.hits(path)) == 1


def test_retries_and_backoff_stay_inside_the_budget(http_server):
    options = dataclasses.replace(TABLE_OPTIONS, timeout=1.0, retries=20)
    path = fresh("/status/503")
    result = fetch_one(options, http_server.url(path))
    assert reason(result) == Reason.HTTP_ERROR and result.http_status == 503
    assert result.seconds <= options.timeout + SLACK
    assert len(http_server.hits(path)) < options.retries + 1


# --- size caps ----------------------------------------------------------------------------------------------


def test_gzip_bomb_is_cut_at_the_cap_not_inflated(http_server):
    # 512 MiB of zeros on ~0.5 MB of wire; inflating it in full would show in the peak.
    tracemalloc.start()
    try:
        result = fetch_one(TABLE_OPTIONS, http_server.url("/big/gzip-bomb"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reason(result) == Reason.TOO_LARGE
    assert result.nbytes <= TABLE_OPTIONS.max_bytes + 1
    assert peak < 32 * 2**20


def test_content_length_at_the_cap_passes_and_one_over_is_refused(http_server):
    body = IMAGES["/img/png.png"][0]
    url = http_server.url("/img/png.png")
    exact = fetch_one(dataclasses.replace(TABLE_OPTIONS, max_bytes=len(body)), url)
    over = fetch_one(dataclasses.replace(TABLE_OPTIONS, max_bytes=len(body) - 1), url)
    assert exact.data == body
    assert reason(over) == Reason.TOO_LARGE and over.nbytes == 0  # refused before reading


# --- connection reuse, headers --------------------------------------------------------------------------------


def test_connections_are_reused(http_server):
    options = dataclasses.replace(TABLE_OPTIONS, concurrency=4)
    tag = uuid.uuid4().hex
    paths = [f"/img/png.png?reuse={tag}-{i}" for i in range(24)]
    with Fetcher(options) as f:
        first = f.fetch_many([http_server.url(p) for p in paths[:12]])
        second = f.fetch_many([http_server.url(p) for p in paths[12:]])
    assert all(reason(r) is None for r in first + second)
    hits = [h for p in paths for h in http_server.hits(p)]
    assert len(hits) == 24
    assert http_server.connections(hits) <= options.concurrency


def test_user_agent_names_us_and_the_token(fetcher, http_server):
    path = fresh("/img/png.png")
    fetcher.fetch_many([http_server.url(path)])
    (hit,) = http_server.hits(path)
    assert hit.user_agent == user_agent(TOKEN)
    assert hit.user_agent.startswith("cogscale/") and hit.user_agent.endswith(f"(+https://github.com/cogscale/cogscale) {TOKEN}")


# --- X-Robots-Tag ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, token, expected",
    [
        (["noai"], None, "noai"),
        (["NoImageAI"], None, "noimageai"),
        (["noindex, nofollow"], None, "noindex"),
        (["nofollow", "noimageindex"], None, "noimageindex"),
        (["nofollow, noarchive"], None, None),
        (["mytoken: noai"], "mytoken", "mytoken: noai"),
        (["MyToken : noai"], "mytoken", "mytoken: noai"),
        (["mytoken: noai"], None, None),
        (["otherbot: noai, noimageai"], "mytoken", None),
        (["otherbot: nofollow, mytoken: noai"], "mytoken", "mytoken: noai"),
        (["noai, otherbot: nofollow"], "mytoken", "noai"),
        (["cogscale: noai"], None, "cogscale: noai"),  # our product name is always us
        (["unavailable_after: 25 Jun 2010 15:00:00 PST"], None, None),
        ([], "mytoken", None),
    ],
)
def test_robots_opt_out(values, token, expected):
    assert robots_opt_out(values, token) == expected


def test_robots_header_ignored_when_asked(http_server):
    options = dataclasses.replace(TABLE_OPTIONS, respect_robots_headers=False)
    assert fetch_one(options, http_server.url("/robots/noai")).data == JPEG


# --- Retry-After parsing ------------------------------------------------------------------------------------------

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        ("0", 0.0),
        (" 7 ", 7.0),
        (format_datetime(NOW + timedelta(seconds=5), usegmt=True), 5.0),
        (format_datetime(NOW - timedelta(hours=1), usegmt=True), 0.0),
        ("soon", None),
        ("-3", None),
    ],
)
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=NOW) == expected


# --- input validation and local files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, allow_local, expected",
    [
        (None, False, Reason.MISSING_URL),
        ("", False, Reason.MISSING_URL),
        ("   ", False, Reason.MISSING_URL),
        (3.5, False, Reason.INVALID_URL),
        ("not a url", False, Reason.INVALID_URL),
        ("example.com/a.jpg", False, Reason.INVALID_URL),
        ("ftp://x", False, Reason.UNSUPPORTED_SCHEME),
        ("data:image/png;base64,AAAA", False, Reason.UNSUPPORTED_SCHEME),
        ("file:///etc/hosts", False, Reason.LOCAL_FILE_REFUSED),
        ("/tmp/x.jpg", False, Reason.LOCAL_FILE_REFUSED),
        ("./x.jpg", False, Reason.LOCAL_FILE_REFUSED),
        ("file:///etc/hosts", True, None),
        ("/tmp/x.jpg", True, None),
        ("file://elsewhere/x.jpg", True, Reason.INVALID_URL),
        ("http://", False, Reason.INVALID_URL),
        ("http://host:port/x", False, Reason.INVALID_URL),
        ("https://example.com/a.jpg", False, None),  # only validated here, never fetched
        (" HTTPS://example.com/a.jpg ", False, None),
    ],
)
def test_validate_url(url, allow_local, expected):
    rejection = validate_url(url, allow_local_files=allow_local)
    assert (None if rejection is None else rejection.reason) == expected


def test_bad_inputs_keep_their_places(fetcher, http_server):
    urls = [None, http_server.url("/img/png.png"), "", "not a url", "ftp://x", "/tmp/x.jpg"]
    results = fetcher.fetch_many(urls)
    assert [reason(r) for r in results] == [
        Reason.MISSING_URL,
        None,
        Reason.MISSING_URL,
        Reason.INVALID_URL,
        Reason.UNSUPPORTED_SCHEME,
        Reason.LOCAL_FILE_REFUSED,
    ]
    assert fetcher.fetch_many([]) == []


def test_local_files_only_with_the_flag(tmp_path):
    image = tmp_path / "a b.jpg"
    image.write_bytes(JPEG)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "big.jpg").write_bytes(JPEG * 64)
    urls = [
        str(image),
        image.as_uri(),  # file:// with the space percent-encoded
        str(tmp_path / "missing.jpg"),
        str(tmp_path / "empty.jpg"),
        str(tmp_path / "big.jpg"),
    ]
    options = dataclasses.replace(TABLE_OPTIONS, allow_local_files=True, max_bytes=len(JPEG) * 2)
    with Fetcher(options) as f:
        allowed = f.fetch_many(urls)
    assert [reason(r) for r in allowed] == [None, None, Reason.FILE_NOT_FOUND, Reason.EMPTY_BODY, Reason.TOO_LARGE]
    assert allowed[0].data == JPEG and allowed[1].data == JPEG and allowed[0].http_status is None
    refused = fetch_one(TABLE_OPTIONS, str(image))
    assert reason(refused) == Reason.LOCAL_FILE_REFUSED


def test_closed_fetcher_refuses_work():
    f = Fetcher(TABLE_OPTIONS)
    f.close()
    f.close()  # idempotent
    with pytest.raises(RuntimeError):
        f.fetch_many(["http://127.0.0.1:9/x.jpg"])
