"""A real HTTP server on 127.0.0.1 for download tests: good images of every kind and hostile hosts.

It runs aiohttp.web on its own event loop in a daemon thread, so hanging routes (trickle, silent,
endless) cost nothing and never block other requests; handlers are cancelled when a client goes
away and at shutdown. Every request is logged (path with query, client port, time), so tests can
count attempts per URL and TCP connections (distinct client ports).

`EXPECTED` is the route table other tests reuse: (path, download-stage rejection reason or None,
HTTP status). It holds for `TABLE_OPTIONS` (timeout 2 s, retries 2, max_bytes 1 MiB,
max_redirects 5, allow_networks 127.0.0.1/32, user_agent_token "cogscale-test"). A None reason
only means the bytes come through the download stage: decoding and filters judge them later.
`/video/NAME` serves the clips of `video_bodies()` (encoded on first use).
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import threading
import time
import zlib
from dataclasses import dataclass

from aiohttp import web

from pipeline.download import DownloadOptions
from pipeline.schema import Reason
from tests import images, videos

TABLE_OPTIONS = DownloadOptions(
    timeout=2.0,
    retries=2,
    max_bytes=2**20,
    max_redirects=5,
    allow_networks=("127.0.0.1/32",),
    user_agent_token="cogscale-test",
)
TOKEN = TABLE_OPTIONS.user_agent_token
BLOCKED_HOST = "127.0.0.2"  # loopback too, so harmless; refused because only 127.0.0.1/32 is open

# path -> (bytes, content type); made once, at import.
IMAGES: dict[str, tuple[bytes, str]] = {
    "/img/jpeg.jpg": (images.jpeg(), "image/jpeg"),
    "/img/png.png": (images.png(), "image/png"),
    "/img/webp.webp": (images.webp(), "image/webp"),
    "/img/cmyk.jpg": (images.cmyk_jpeg(), "image/jpeg"),
    "/img/palette.png": (images.palette_png(), "image/png"),
    "/img/rgba.png": (images.rgba_png(), "image/png"),
    "/img/png16.png": (images.png16(), "image/png"),
    "/img/animated.gif": (images.animated_gif(), "image/gif"),
    "/img/exif-rotated.jpg": (images.exif_rotated_jpeg(), "image/jpeg"),
    "/img/tiny-8x8.png": (images.png(8, 8), "image/png"),
    "/img/wide-7x1.png": (images.png(140, 20), "image/png"),
    "/img/tall-1x7.png": (images.png(20, 140), "image/png"),
    "/img/wide-6x1.png": (images.png(120, 20), "image/png"),
    "/img/truncated.jpg": (images.truncated_jpeg(), "image/jpeg"),
    "/img/bomb.png": (images.bomb_png(), "image/png"),
}



@functools.cache
def video_bodies() -> dict[str, tuple[bytes, str]]:
    """path -> (bytes, content type) of the /video/ routes; encoded on first use, not at import."""
    mp4 = videos.encode(seconds=3.0, fps=10)
    return {
        "/video/clip.mp4": (mp4, "video/mp4"),
        "/video/clip.webm": (videos.encode(seconds=2.0, fps=10, container="webm", codec="libvpx-vp9"), "video/webm"),
        "/video/with-audio.mp4": (videos.encode(seconds=2.0, audio=True), "video/mp4"),
        "/video/long.mp4": (videos.encode(seconds=30.0, fps=2), "video/mp4"),
        "/video/truncated.mp4": (videos.truncated(videos.encode(seconds=4.0, fps=10)), "video/mp4"),
        "/video/audio-only.m4a": (videos.audio_only(), "audio/mp4"),
        "/video/zero-frames.mp4": (videos.zero_frames(), "video/mp4"),
        "/video/huge.mkv": (videos.huge(), "video/x-matroska"),
    }


HTML = b"<!doctype html><html><head><title>not an image</title></head><body>hello</body></html>"
TRICKLE_INTERVAL = 0.5
ENDLESS_CHUNK = bytes(1024)
ENDLESS_INTERVAL = 0.01  # ~100 KiB/s: stays under 1 MiB (and 32 MiB) within any sane timeout
OVERSIZED_CHUNKED_BYTES = 48 * 2**20  # over the default max_bytes (32 MiB) as well as 1 MiB
GZIP_BOMB_DECODED = 512 * 2**20  # ~0.5 MB on the wire: under the 1 MiB Content-Length check


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# /encoded/<kind> -> (Content-Encoding, encoder)
ENCODERS = {
    "gzip": ("gzip", gzip.compress),
    "deflate": ("deflate", zlib.compress),
    "raw-deflate": ("deflate", _raw_deflate),
}


def gzip_bomb(decoded_size: int) -> bytes:
    """A valid gzip stream of `decoded_size` zero bytes (a multiple of 1 MiB), ~1000x smaller.

    After a full flush, deflate's state is reset, so compressing the same block again gives the
    same bytes: one compressed megabyte is repeated instead of compressing the whole size.
    """
    block = bytes(2**20)
    blocks, leftover = divmod(decoded_size, len(block))
    assert blocks >= 2 and not leftover
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    end_of_stream = compressor.flush()[:-8]  # the final empty block; the trailer is redone below
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    trailer = crc.to_bytes(4, "little") + (decoded_size % 2**32).to_bytes(4, "little")
    return first + repeated * (blocks - 1) + end_of_stream + trailer


@dataclass(frozen=True)
class Route:
    path: str
    reason: str | None  # expected download-stage rejection under TABLE_OPTIONS; None = data
    http_status: int | None
    host: str = "127.0.0.1"  # BLOCKED_HOST for the one URL that must never be connected to


EXPECTED: tuple[Route, ...] = (
    *(Route(path, None, 200) for path in IMAGES),
    Route("/slow/image.jpg", None, 200),
    Route("/html", None, 200),
    *(Route(f"/encoded/{kind}", None, 200) for kind in ENCODERS),
    Route("/status/404", Reason.HTTP_ERROR, 404),
    Route("/status/403", Reason.HTTP_ERROR, 403),
    Route("/status/410", Reason.HTTP_ERROR, 410),
    Route("/status/500", Reason.HTTP_ERROR, 500),
    Route("/flaky/429?failures=1&retry_after=0", None, 200),  # counter per path+query
    Route("/flaky/429?failures=1&retry_after=1", None, 200),
    Route("/flaky/503?failures=1", None, 200),
    Route("/status/503", Reason.HTTP_ERROR, 503),  # always 503: retries run out
    Route("/retry-after/3600", Reason.HTTP_ERROR, 429),  # wait longer than the budget: stop
    Route("/hang/trickle", Reason.TIMEOUT, 200),
    Route("/hang/silent", Reason.TIMEOUT, None),
    Route("/hang/endless", Reason.TIMEOUT, 200),
    Route("/big/endless-fast", Reason.TOO_LARGE, 200),
    Route("/big/content-length", Reason.TOO_LARGE, 200),
    Route("/big/chunked", Reason.TOO_LARGE, 200),
    Route("/big/gzip-bomb", Reason.TOO_LARGE, 200),
    Route("/redirect/chain/3", None, 200),
    Route("/redirect/chain/6", Reason.TOO_MANY_REDIRECTS, 302),
    Route("/redirect/loop", Reason.TOO_MANY_REDIRECTS, 302),
    Route("/redirect/blocked", Reason.BLOCKED_ADDRESS, 302),
    Route("/img/jpeg.jpg", Reason.BLOCKED_ADDRESS, None, host=BLOCKED_HOST),
    Route("/empty", Reason.EMPTY_BODY, 200),
    Route("/robots/noai", Reason.ROBOTS_OPT_OUT, 200),
    Route("/robots/noimageindex", Reason.ROBOTS_OPT_OUT, 200),
    Route("/robots/ours", Reason.ROBOTS_OPT_OUT, 200),
    Route("/robots/other-agent", None, 200),
)


@dataclass(frozen=True)
class Hit:
    path_qs: str
    client_port: int
    at: float  # time.monotonic()
    user_agent: str


class HttpServer:
    """Start with `start()`, stop with `stop()`; `url(path)` builds URLs to it."""

    def __init__(self):
        self.port = 0
        self._hits: list[Hit] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-http-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self._gzip_bomb = gzip_bomb(GZIP_BOMB_DECODED)
        self._files: dict[str, tuple[bytes, str]] = {}  # served under /files/NAME, see add_file

    # --- lifecycle and queries ------------------------------------------------------------

    def start(self) -> HttpServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result()
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def add_file(self, name: str, body: bytes, content_type: str) -> str:
        """Serve body at /files/NAME from now on; returns its URL."""
        self._files[name] = (body, content_type)
        return self.url(f"/files/{name}")

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def route_url(self, route: Route) -> str:
        return self.url(route.path, route.host)

    def hits(self, path_qs: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self._hits if path_qs is None or h.path_qs == path_qs]

    def connections(self, hits: list[Hit]) -> int:
        """How many TCP connections carried these requests (one client port each)."""
        return len({h.client_port for h in hits})

    # --- the app ----------------------------------------------------------------------------------

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._log_hit])
        app.add_routes(
            [
                web.get("/img/{name}", self._image),
                web.get("/video/{name}", self._video),
                web.get("/files/{name}", self._file),
                web.get("/slow/image.jpg", self._slow_image),
                web.get("/html", self._html),
                web.get("/empty", self._empty),
                web.get("/status/{code}", self._status),
                web.get("/flaky/{code}", self._flaky),
                web.get("/retry-after/{seconds}", self._retry_after),
                web.get("/hang/trickle", self._trickle),
                web.get("/hang/silent", self._silent),
                web.get("/hang/endless", self._endless),
                web.get("/big/endless-fast", self._endless_fast),
                web.get("/big/content-length", self._huge_content_length),
                web.get("/big/chunked", self._oversized_chunked),
                web.get("/big/gzip-bomb", self._gzip_bomb_route),
                web.get("/redirect/chain/{hops}", self._redirect_chain),
                web.get("/redirect/loop", self._redirect_loop),
                web.get("/redirect/blocked", self._redirect_blocked),
                web.get("/robots/{kind}", self._robots),
                web.get("/encoded/{kind}", self._encoded),
            ]
        )
        # handler_cancellation: a hanging handler ends as soon as its client goes away.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    @web.middleware
    async def _log_hit(self, request: web.Request, handler):
        peer = request.transport.get_extra_info("peername") if request.transport else None
        hit = Hit(request.path_qs, peer[1] if peer else -1, time.monotonic(), request.headers.get("User-Agent", ""))
        with self._lock:
            self._hits.append(hit)
        return await handler(request)

    def _count(self, request: web.Request) -> int:
        """How many times this exact path and query has been requested, this one included."""
        return len(self.hits(request.path_qs))

    async def _image(self, request: web.Request) -> web.Response:
        if request.path not in IMAGES:
            raise web.HTTPNotFound()
        return _image_response(request.path)

    async def _video(self, request: web.Request) -> web.Response:
        bodies = await asyncio.to_thread(video_bodies)  # the first request encodes them
        if request.path not in bodies:
            raise web.HTTPNotFound()
        body, content_type = bodies[request.path]
        return web.Response(body=body, content_type=content_type)

    async def _file(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in self._files:
            raise web.HTTPNotFound()
        body, content_type = self._files[request.match_info["name"]]
        return web.Response(body=body, content_type=content_type)

    async def _slow_image(self, request: web.Request) -> web.StreamResponse:
        body, content_type = IMAGES["/img/jpeg.jpg"]
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(body)
        await response.prepare(request)
        pieces = 4
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            await asyncio.sleep(0.1)
            await response.write(body[start : start + step])
        await response.write_eof()
        return response

    async def _html(self, request: web.Request) -> web.Response:
        return web.Response(body=HTML, content_type="text/html")

    async def _empty(self, request: web.Request) -> web.Response:
        return web.Response(body=b"", content_type="image/jpeg")

    async def _status(self, request: web.Request) -> web.Response:
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def _flaky(self, request: web.Request) -> web.Response:
        """`failures` errors with this status (default 1), then the JPEG; per path and query."""
        if self._count(request) <= int(request.query.get("failures", "1")):
            headers = {}
            if "retry_after" in request.query:
                headers["Retry-After"] = request.query["retry_after"]
            return web.Response(status=int(request.match_info["code"]), headers=headers, text="later")
        return _image_response("/img/jpeg.jpg")

    async def _retry_after(self, request: web.Request) -> web.Response:
        return web.Response(status=429, headers={"Retry-After": request.match_info["seconds"]}, text="later")

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        await response.prepare(request)
        for _ in range(600):  # five minutes of one byte per interval
            await response.write(b"\xff")
            await asyncio.sleep(TRICKLE_INTERVAL)
        return response

    async def _silent(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(3600)  # reads the request, never answers; cancelled on disconnect
        raise web.HTTPGatewayTimeout()

    async def _stream_forever(self, request: web.Request, interval: float) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        while True:  # ends when the client disconnects (write fails or the handler is cancelled)
            await response.write(ENDLESS_CHUNK)
            await asyncio.sleep(interval)

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        return await self._stream_forever(request, ENDLESS_INTERVAL)

    async def _endless_fast(self, request: web.Request) -> web.StreamResponse:
        return await self._stream_forever(request, 0)

    async def _huge_content_length(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.content_length = 10 * 10**9
        await response.prepare(request)
        await response.write(ENDLESS_CHUNK)
        await asyncio.sleep(3600)  # a client that trusts the claim waits here
        return response

    async def _oversized_chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        block = bytes(64 * 2**10)
        for _ in range(OVERSIZED_CHUNKED_BYTES // len(block)):
            await response.write(block)
        await response.write_eof()
        return response

    async def _gzip_bomb_route(self, request: web.Request) -> web.Response:
        return web.Response(body=self._gzip_bomb, headers={"Content-Encoding": "gzip", "Content-Type": "image/jpeg"})

    async def _encoded(self, request: web.Request) -> web.Response:
        """The JPEG with a Content-Encoding; "raw-deflate" is deflate without the zlib wrapper,
        which servers send as "deflate" often enough to matter."""
        body, content_type = IMAGES["/img/jpeg.jpg"]
        kind = request.match_info["kind"]
        if kind not in ENCODERS:
            raise web.HTTPNotFound()
        encoding, encode = ENCODERS[kind]
        return web.Response(body=encode(body), headers={"Content-Encoding": encoding, "Content-Type": content_type})

    async def _redirect_chain(self, request: web.Request) -> web.Response:
        hops = int(request.match_info["hops"])
        target = f"/redirect/chain/{hops - 1}" if hops > 1 else "/img/jpeg.jpg"
        raise web.HTTPFound(target)  # relative Location: the client must resolve it

    async def _redirect_loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/redirect/loop")

    async def _redirect_blocked(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(self.url("/img/jpeg.jpg", host=BLOCKED_HOST))

    async def _robots(self, request: web.Request) -> web.Response:
        tags = {
            "noai": "noai",
            "noimageindex": "noimageindex, nofollow",
            "ours": f"{TOKEN}: noai",
            "other-agent": "otherbot: noai, noimageai",
        }
        kind = request.match_info["kind"]
        if kind not in tags:
            raise web.HTTPNotFound()
        response = _image_response("/img/jpeg.jpg")
        response.headers["X-Robots-Tag"] = tags[kind]
        return response


def _image_response(path: str) -> web.Response:
    body, content_type = IMAGES[path]
    return web.Response(body=body, content_type=content_type)
