"""The download engine: many URLs at once, each one held to a total time budget and a byte cap.

Pure asyncio + aiohttp; the Ray stage wraps one `Fetcher` per worker. What it does that
img2dataset's downloader does not:

- `timeout` is one deadline per URL covering connect, headers, body, every retry and every
  backoff sleep, so a server that trickles bytes or never answers cannot hold a slot past it;
- bodies are capped at `max_bytes` (on Content-Length before reading, and while reading, on the
  decoded bytes: gzip/deflate are inflated here, never more than the cap at a time);
- redirects are followed by hand, with a limit, and every connection is checked against the
  address guard (`pipeline.netguard`), redirect targets included;
- retries with exponential backoff and full jitter, honouring Retry-After when it fits.

Every input position gets a `DownloadResult`; per-URL problems are results, never exceptions.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib.metadata
import logging
import os
import random
import threading
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import unquote, urljoin, urlsplit
from urllib.request import url2pathname

import aiohttp

from pipeline.netguard import AddressPolicy, BlockedAddressError, GuardedResolver
from pipeline.schema import Reason, Rejection

log = logging.getLogger(__name__)

PROJECT_URL = "https://github.com/cogscale/cogscale"
# Our own product token: `X-Robots-Tag: cogscale: noai` addresses us whatever token is set.
PRODUCT = "cogscale"
# The X-Robots-Tag directives that opt an image out, as img2dataset honours them.
OPT_OUT_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex"})
# Directives whose value contains a colon, so `name: value` is not an agent scope.
_VALUED_DIRECTIVES = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_BASE_SECONDS = 0.5
READ_CHUNK = 64 * 2**10


def _version() -> str:
    try:
        return importlib.metadata.version(PRODUCT)
    except importlib.metadata.PackageNotFoundError:  # running from a source checkout
        return "0+unknown"


def user_agent(token: str | None) -> str:
    agent = f"{PRODUCT}/{_version()} (+{PROJECT_URL})"
    return f"{agent} {token}" if token else agent


@dataclass(frozen=True)
class DownloadOptions:
    timeout: float = 10.0  # total seconds per URL: connect + headers + body + retries + backoff
    retries: int = 2  # extra attempts for 429, 5xx, connection resets, connect timeouts
    max_bytes: int = 32 * 2**20  # on Content-Length, while reading, and after gzip/deflate decoding
    max_redirects: int = 5
    user_agent_token: str | None = None
    allow_networks: tuple[str, ...] = ()  # CIDRs opened on top of the public internet
    allow_local_files: bool = False
    concurrency: int = 64  # requests in flight per Fetcher
    respect_robots_headers: bool = True  # X-Robots-Tag opt-outs

    def __post_init__(self):
        # Bad options fail here, when the job starts, not on the first URL of some worker.
        if self.timeout <= 0 or self.max_bytes <= 0 or self.concurrency < 1:
            raise ValueError("timeout, max_bytes and concurrency must be positive")
        if self.retries < 0 or self.max_redirects < 0:
            raise ValueError("retries and max_redirects cannot be negative")
        object.__setattr__(self, "allow_networks", tuple(self.allow_networks))
        AddressPolicy(self.allow_networks)  # raises ValueError for a malformed CIDR


@dataclass
class DownloadResult:
    data: bytes | None
    http_status: int | None
    final_url: str | None
    nbytes: int
    seconds: float
    rejection: Rejection | None  # None when `data` is good to go on


# --- input validation ---------------------------------------------------------------------


def _is_local(url: str) -> bool:
    """file:// URLs and plain paths. A relative path must say so ("./", "../"): a bare
    "host/x.jpg" is more likely a URL without a scheme than a file."""
    return url.lower().startswith("file:") or url.startswith(("/", "./", "../", "~"))


def validate_url(url: object, allow_local_files: bool) -> Rejection | None:
    """Why `url` cannot be fetched at all, or None. Sends nothing anywhere."""
    if url is None or (isinstance(url, str) and not url.strip()):
        return Rejection(Reason.MISSING_URL, "no URL")
    if not isinstance(url, str):
        return Rejection(Reason.INVALID_URL, f"URL is a {type(url).__name__}, not a string")
    url = url.strip()
    if _is_local(url):
        if not allow_local_files:
            return Rejection(Reason.LOCAL_FILE_REFUSED, f"local file {url!r} needs --allow-local-files")
        if url.lower().startswith("file:") and urlsplit(url).netloc not in ("", "localhost"):
            return Rejection(Reason.INVALID_URL, f"file URL with a remote host: {url!r}")
        return None
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError as err:
        return Rejection(Reason.INVALID_URL, f"{url!r}: {err}")
    if not parts.scheme:
        return Rejection(Reason.INVALID_URL, f"not a URL: {url!r}")
    if parts.scheme.lower() not in ("http", "https"):
        return Rejection(Reason.UNSUPPORTED_SCHEME, f"scheme {parts.scheme!r} is not http or https")
    if not parts.hostname or any(ch.isspace() for ch in parts.netloc):
        return Rejection(Reason.INVALID_URL, f"no valid host in {url!r}")
    return None


# --- header parsing ---------------------------------------------------------------------------


def robots_opt_out(header_values: Iterable[str], user_agent_token: str | None) -> str | None:
    """The X-Robots-Tag directive that opts out of use by us, or None.

    Each header value is a comma-separated list of directives; `agent: directive` starts a
    scope for that agent that lasts until the next `agent:` (Google's syntax; img2dataset reads
    only one scope per header value). Unscoped directives apply to everyone; scoped ones only
    to our product name or to `user_agent_token`, case-insensitively.
    """
    ours = {PRODUCT} | ({user_agent_token.strip().lower()} if user_agent_token else set())
    for value in header_values:
        scope = None
        for piece in value.split(","):
            name, colon, rest = piece.partition(":")
            name = name.strip().lower()
            if colon and name not in _VALUED_DIRECTIVES and name and " " not in name:
                scope, directive = name, rest
            else:
                directive = piece
            directive = directive.strip().lower()
            if directive in OPT_OUT_DIRECTIVES and (scope is None or scope in ours):
                return f"{scope}: {directive}" if scope else directive
    return None


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past means 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000" dates parse naive; HTTP dates are always GMT
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


# --- body reading -------------------------------------------------------------------------------


class _CappedBody:
    """Collects a body, inflating gzip/deflate here (the session has auto_decompress off) so the
    cap is on decoded bytes and no more than cap + 1 decoded bytes ever exist: a gzip bomb is
    cut after the first megabytes instead of being inflated in full. Other encodings (we only
    advertise gzip and deflate) are kept as received and left to the decoder to refuse."""

    def __init__(self, content_encoding: str, cap: int):
        encoding = content_encoding.strip().lower()
        self._cap = cap
        self._parts: list[bytes] = []
        self.size = 0  # decoded bytes kept
        self.wire = 0  # bytes received
        self._deflate = encoding == "deflate"
        if encoding in ("gzip", "x-gzip"):
            self._inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif self._deflate:
            self._inflater = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            self._inflater = None

    def feed(self, chunk: bytes) -> bool:
        """Add a received chunk; False once the body is over the cap (stop reading)."""
        self.wire += len(chunk)
        if self.wire > self._cap:
            return False
        if self._inflater is not None:
            if self._inflater.eof:  # bytes after the end of the stream: nothing more to keep
                return True
            chunk = self._inflate(chunk)
        self.size += len(chunk)
        self._parts.append(chunk)
        return self.size <= self._cap

    def _inflate(self, chunk: bytes) -> bytes:
        room = self._cap - self.size + 1  # one byte past the cap is enough to know it is over
        try:
            return self._inflater.decompress(chunk, room)
        except zlib.error:
            # "deflate" is often sent as a raw deflate stream without the zlib wrapper.
            if not (self._deflate and self.wire == len(chunk)):
                raise
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            self._deflate = False
            return self._inflater.decompress(chunk, room)

    def finish(self) -> bytes:
        if self._inflater is not None and not self._inflater.eof:
            raise zlib.error("compressed body ends before its stream does")
        return b"".join(self._parts)


# --- one URL ----------------------------------------------------------------------------------------


@dataclass
class _Progress:
    """What is known about one URL so far; survives the deadline cancelling the fetch."""

    url: str
    http_status: int | None = None
    nbytes: int = 0


@dataclass
class _Step:
    """The outcome of one HTTP exchange: data, a rejection (maybe worth retrying), or a redirect."""

    data: bytes | None = None
    rejection: Rejection | None = None
    redirect: str | None = None
    retryable: bool = False
    retry_after: float | None = None


def _rejected(reason: str, message: str, retryable: bool = False) -> _Step:
    return _Step(rejection=Rejection(reason, message), retryable=retryable)


def _read_local_file(path: str, cap: int) -> _Step:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > cap:
                return _rejected(Reason.TOO_LARGE, f"file is {size} bytes, over max_bytes {cap}")
            data = f.read(cap + 1)  # the file may grow after fstat
    except OSError as err:
        return _rejected(Reason.FILE_NOT_FOUND, f"{path}: {err.strerror or err}")
    if len(data) > cap:
        return _rejected(Reason.TOO_LARGE, f"file is over max_bytes {cap}")
    if not data:
        return _rejected(Reason.EMPTY_BODY, f"{path} is empty")
    return _Step(data=data)


def _local_path(url: str) -> str:
    if url.lower().startswith("file:"):
        return url2pathname(unquote(urlsplit(url).path))
    return os.path.expanduser(url)


class Fetcher:
    """Downloads URLs with bounded concurrency on its own event loop (a daemon thread) and one
    aiohttp session, so connections are reused across calls. Not thread-safe: one caller."""

    def __init__(self, options: DownloadOptions):
        self.options = options
        self._policy = AddressPolicy(options.allow_networks)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="cogscale-fetcher", daemon=True)
        self._thread.start()
        self._closed = False
        self._session, self._slots = self._run(self._open())

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        connector = aiohttp.TCPConnector(
            limit=self.options.concurrency,
            resolver=GuardedResolver(self._policy),
            socket_factory=self._policy.socket_factory,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers={
                "User-Agent": user_agent(self.options.user_agent_token),
                "Accept": "image/*,*/*;q=0.8",
                "Accept-Encoding": "gzip, deflate",
            },
            auto_decompress=False,  # _CappedBody inflates, under the cap
            cookie_jar=aiohttp.DummyCookieJar(),  # URLs are independent; no state between them
            timeout=aiohttp.ClientTimeout(total=None),  # the per-URL deadline is ours
        )
        return session, asyncio.Semaphore(self.options.concurrency)

    def fetch_many(self, urls: Sequence[str | None]) -> list[DownloadResult]:
        """One result per URL, in order. Blocks until all are done (each within its budget)."""
        if self._closed:
            raise RuntimeError("Fetcher is closed")
        return self._run(self._fetch_all(urls))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._run(self._session.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def _fetch_all(self, urls: Sequence[str | None]) -> list[DownloadResult]:
        return list(await asyncio.gather(*(self._fetch_one(url) for url in urls)))

    async def _fetch_one(self, url: str | None) -> DownloadResult:
        rejection = validate_url(url, self.options.allow_local_files)
        if rejection is not None:
            return DownloadResult(None, None, None, 0, 0.0, rejection)
        progress = _Progress(url.strip())
        # The budget starts when a slot is free: waiting behind other URLs is not this URL's time.
        async with self._slots:
            started = time.monotonic()
            step = await self._within_budget(progress)
            seconds = time.monotonic() - started
        if step.data is not None:
            progress.nbytes = len(step.data)
        return DownloadResult(step.data, progress.http_status, progress.url, progress.nbytes, seconds, step.rejection)

    async def _within_budget(self, progress: _Progress) -> _Step:
        budget = self.options.timeout
        try:
            async with asyncio.timeout(budget):
                if _is_local(progress.url):
                    path = _local_path(progress.url)
                    return await asyncio.to_thread(_read_local_file, path, self.options.max_bytes)
                return await self._fetch_http(progress, asyncio.get_running_loop().time() + budget)
        except TimeoutError:
            seen = f"; last HTTP {progress.http_status}" if progress.http_status is not None else ""
            return _rejected(Reason.TIMEOUT, f"not done within the {budget:g} s budget ({progress.nbytes} bytes read{seen})")
        except Exception as err:  # a bug or an aiohttp surprise must not take the batch down
            log.exception("unexpected error downloading %s", progress.url)
            return _rejected(Reason.CONNECTION_ERROR, f"unexpected {type(err).__name__}: {err}")

    async def _fetch_http(self, progress: _Progress, deadline: float) -> _Step:
        """Follows redirects and retries until a final step; the caller enforces the deadline."""
        loop = asyncio.get_running_loop()
        # A connect that takes more than its share of the budget is retried rather than waited for.
        connect_share = self.options.timeout / (self.options.retries + 1)
        redirects = failures = 0
        while True:
            remaining = deadline - loop.time()
            step = await self._attempt(progress, min(connect_share, max(remaining, 0.001)))
            if step.redirect is not None:
                if redirects == self.options.max_redirects:
                    return _rejected(
                        Reason.TOO_MANY_REDIRECTS,
                        f"more than {self.options.max_redirects} redirects (next: {step.redirect})",
                    )
                redirects += 1
                progress.url = step.redirect
                continue
            if not step.retryable or failures == self.options.retries:
                return step
            remaining = deadline - loop.time()
            if step.retry_after is not None:
                delay = step.retry_after
                if delay >= remaining:
                    return self._no_retry(step, f"Retry-After {delay:g} s exceeds the {remaining:.2f} s left")
            else:  # full jitter: uniform over [0, base * 2^failures)
                delay = random.uniform(0, BACKOFF_BASE_SECONDS * 2**failures)
                if delay >= remaining:
                    return self._no_retry(step, f"backoff {delay:.2f} s exceeds the {remaining:.2f} s left")
            failures += 1
            await asyncio.sleep(delay)

    @staticmethod
    def _no_retry(step: _Step, why: str) -> _Step:
        assert step.rejection is not None
        return _rejected(step.rejection.reason, f"{step.rejection.message}; not retried: {why}")

    async def _attempt(self, progress: _Progress, connect_timeout: float) -> _Step:
        """One HTTP exchange, with aiohttp's exceptions turned into steps."""
        try:
            return await self._exchange(progress, connect_timeout)
        except aiohttp.ClientConnectorError as err:
            if isinstance(err.os_error, BlockedAddressError):
                return _rejected(Reason.BLOCKED_ADDRESS, str(err.os_error))
            if isinstance(err, aiohttp.ClientConnectorDNSError):
                return _rejected(Reason.CONNECTION_ERROR, f"DNS lookup failed for {err.host}: {err.os_error}")
            return _rejected(Reason.CONNECTION_ERROR, str(err))
        except (aiohttp.InvalidURL, ValueError) as err:
            return _rejected(Reason.INVALID_URL, f"{progress.url!r}: {err}")
        except TimeoutError as err:  # aiohttp's own connect timeout; the deadline is a cancellation
            return _rejected(Reason.TIMEOUT, f"connect timed out ({type(err).__name__})", retryable=True)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
            # Resets, disconnects and bodies cut short: worth another try.
            return _rejected(Reason.CONNECTION_ERROR, f"{type(err).__name__}: {err}", retryable=True)
        except aiohttp.ClientError as err:  # e.g. a malformed response
            return _rejected(Reason.CONNECTION_ERROR, f"{type(err).__name__}: {err}")
        except zlib.error as err:
            return _rejected(Reason.DECODE_ERROR, f"Content-Encoding not decodable: {err}")

    async def _exchange(self, progress: _Progress, connect_timeout: float) -> _Step:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        async with self._session.get(progress.url, allow_redirects=False, timeout=timeout) as response:
            status = progress.http_status = response.status
            progress.nbytes = 0
            if status in REDIRECT_STATUSES:
                return self._redirect(progress.url, status, response.headers.get("Location"))
            if status in RETRYABLE_STATUSES:
                step = _rejected(Reason.HTTP_ERROR, f"HTTP {status} {response.reason or ''}".strip(), retryable=True)
                step.retry_after = parse_retry_after(response.headers.get("Retry-After"))
                return step
            if not 200 <= status < 300:
                return _rejected(Reason.HTTP_ERROR, f"HTTP {status} {response.reason or ''}".strip())
            if self.options.respect_robots_headers:
                directive = robots_opt_out(response.headers.getall("X-Robots-Tag", []), self.options.user_agent_token)
                if directive is not None:
                    return _rejected(Reason.ROBOTS_OPT_OUT, f"X-Robots-Tag {directive}")
            cap = self.options.max_bytes
            if response.content_length is not None and response.content_length > cap:
                return _rejected(Reason.TOO_LARGE, f"Content-Length {response.content_length} is over max_bytes {cap}")
            body = _CappedBody(response.headers.get("Content-Encoding", ""), cap)
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                over = not body.feed(chunk)
                progress.nbytes = body.size
                if over:
                    return _rejected(Reason.TOO_LARGE, f"body is over max_bytes {cap} ({body.wire} bytes received)")
            data = body.finish()
        if not data:
            return _rejected(Reason.EMPTY_BODY, f"HTTP {status} with an empty body")
        return _Step(data=data)

    @staticmethod
    def _redirect(url: str, status: int, location: str | None) -> _Step:
        if not location:
            return _rejected(Reason.HTTP_ERROR, f"HTTP {status} redirect without a Location")
        target = urljoin(url, location.strip())
        # Never on to a local file or an odd scheme, whatever --allow-local-files says.
        refused = validate_url(target, allow_local_files=False)
        if refused is not None:
            return _rejected(Reason.HTTP_ERROR, f"HTTP {status} redirect to {target!r} refused: {refused.message}")
        return _Step(redirect=target)
