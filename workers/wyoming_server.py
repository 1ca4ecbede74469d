"""The Wyoming server: Home Assistant's speech-to-text over TCP, on a warm engine of its own.

It speaks the protocol through the ``wyoming`` package, the library Home Assistant itself uses:

- ``describe`` → ``info``: one ASR program listing each installed model and its languages;
- ``transcribe`` (optional model ``name`` and ``language``), ``audio-start``, ``audio-chunk``…, ``audio-stop``
  → ``transcript``; audio of any rate, width and channel count becomes 16 kHz mono (``workers.pcmstream``);
- ``ping`` → ``pong``; any other event is dropped, as the protocol asks of servers.

Voice commands are not jobs. This process (``whisper-transcriber wyoming``, started by ``run`` when
``WYOMING_ENABLED``) loads its own engine context at start and keeps it warm, at the normal CPU priority,
while the workers run at ``WORKER_NICE``: a command never waits in the queue or for a window of a long
file, and the kernel gives it the cores first. whisper.cpp encodes each command with an ``audio_ctx`` sized
to it (``workers.silence.audio_ctx_for``), instead of the padded 30 s window faster-whisper always pays for.
The models, the engine and the counters are ``workers/wyoming_voice.py``.

Everything a client can send is bounded: an event header (64 KiB), its data (64 KiB) and payload (4 MiB),
the audio of one command (``WYOMING_MAX_SECONDS``), the silence between events (``IDLE_SECONDS``) and the
number of connections (``MAX_CONNECTIONS``). A client that breaks the protocol gets an ``error`` event and
the connection is closed; a refused request (unknown model or language) gets an ``error`` and the
connection stays usable. Wyoming has no authentication: the socket binds to ``WYOMING_HOST`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import Mapping
from typing import Any

from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler

from workers.pcmstream import FormatError, PcmFormat, PcmStream, TooLong
from workers.wyoming_voice import ProtocolError, Request, RequestError, Voice

log = logging.getLogger(__name__)

IDLE_SECONDS = 30.0  # a connection that sends nothing for this long is closed
MAX_CONNECTIONS = 16  # each may buffer up to WYOMING_MAX_SECONDS of audio (~1 MB for 30 s)
MAX_HEADER_BYTES = 64 * 1024
MAX_DATA_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 4 * 1024**2  # one chunk: a second of 8-channel 32-bit 96 kHz audio is 3 MB
LINGER_SECONDS = 2.0  # after an error that closes the connection, see CommandHandler._linger


async def read_event(reader: asyncio.StreamReader) -> Event | None:
    """The next event, or None when the client has gone; :class:`ProtocolError` for a malformed or oversized one.

    The ``wyoming`` package's own reader trusts ``payload_length``: a client announcing gigabytes would
    have them buffered. Here every length is checked before anything is read.
    """
    try:
        line = await reader.readline()
    except ValueError as exc:  # the header passed the reader's limit
        raise ProtocolError("event-too-large", f"an event header is limited to {MAX_HEADER_BYTES} bytes") from exc
    if not line.endswith(b"\n"):
        return None  # end of stream, perhaps in the middle of a line
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise ProtocolError("malformed-event", "an event header must be one line of JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise ProtocolError("malformed-event", "an event header must be a JSON object with a type")
    data = header.get("data") or {}
    lengths = [header.get("data_length") or 0, header.get("payload_length") or 0]
    if not isinstance(data, dict) or not all(isinstance(n, int) and n >= 0 for n in lengths):
        raise ProtocolError("malformed-event", "data must be an object and lengths whole numbers")
    if lengths[0] > MAX_DATA_BYTES or lengths[1] > MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            "event-too-large",
            f"event data is limited to {MAX_DATA_BYTES} bytes and a payload to {MAX_PAYLOAD_BYTES} bytes",
        )
    try:
        if lengths[0]:
            extra = json.loads(await reader.readexactly(lengths[0]))
            if not isinstance(extra, dict):
                raise ProtocolError("malformed-event", "event data must be a JSON object")
            data.update(extra)
        payload = await reader.readexactly(lengths[1]) if lengths[1] else None
    except asyncio.IncompleteReadError:
        return None
    except ValueError as exc:
        raise ProtocolError("malformed-event", "event data must be JSON") from exc
    return Event(type=header["type"], data=data, payload=payload)


class CommandHandler(AsyncEventHandler):
    """One client connection: describe, and any number of transcribe → audio → transcript rounds."""

    def __init__(self, voice: Voice, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        super().__init__(reader, writer)
        self.voice = voice
        self.request: Request | None = None
        self.refused = False  # the transcribe was refused: its audio is read and dropped until audio-stop
        self.streaming = False
        self.stream: PcmStream | None = None

    async def run(self) -> None:
        """Read events until the client leaves, breaks the protocol or stays silent too long."""
        self.voice.connections += 1
        try:
            if self.voice.connections > MAX_CONNECTIONS:
                await self._error("busy", f"more than {MAX_CONNECTIONS} connections; try again shortly")
                return
            while True:
                try:
                    event = await asyncio.wait_for(read_event(self.reader), IDLE_SECONDS)
                    if event is None or not await self.handle_event(event):
                        break
                except ProtocolError as exc:
                    self.streaming = False  # counted as an error, not also as abandoned
                    await self._error(exc.code, exc.text)
                    await self._linger()
                    break
                except TimeoutError:
                    log.info("wyoming: closing a connection silent for %.0f s", IDLE_SECONDS)
                    break
        except (ConnectionError, OSError):
            pass  # the client went away while we were writing
        except Exception:  # a bug of ours: this client gets an error, the others are served on
            log.exception("wyoming: an event could not be handled")
            self.streaming = False
            await self._error("internal-error", "the server failed on this request; see its system log")
        finally:
            self.voice.connections -= 1
            if self.streaming and not self.refused:
                log.info(
                    "wyoming: the client left in the middle of a command (%.1f s of audio)",
                    self.stream.seconds if self.stream else 0.0,
                )
                self.voice.count("abandoned")
            self.writer.close()

    async def handle_event(self, event: Event) -> bool:
        """Answer one event; False closes the connection (a :class:`ProtocolError` closes it too)."""
        try:
            await self._dispatch(event)
        except RequestError as exc:  # refused, not broken: the client may send the next request
            await self._error(exc.code, exc.text)
        return True

    async def _dispatch(self, event: Event) -> None:
        if Describe.is_type(event.type):
            await self.write_event(self.voice.info().event())
        elif Ping.is_type(event.type):
            await self.write_event(Pong(text=event.data.get("text")).event())
        elif Transcribe.is_type(event.type):
            self._transcribe(Transcribe.from_event(event))
        elif AudioStart.is_type(event.type):
            self._start(event)
        elif AudioChunk.is_type(event.type):
            self._chunk(event)
        elif AudioStop.is_type(event.type):
            await self._stop()
        else:
            log.debug("wyoming: ignoring a %s event", event.type)

    def _transcribe(self, transcribe: Transcribe) -> None:
        if self.streaming:
            raise ProtocolError("transcribe-during-audio", "transcribe came between audio-start and audio-stop")
        if not all(v is None or isinstance(v, str) for v in (transcribe.name, transcribe.language)):
            raise ProtocolError("malformed-event", "transcribe's name and language must be strings")
        self.request, self.refused = None, False
        try:
            self.request = self.voice.resolve(transcribe.name, transcribe.language)
        except RequestError:
            self.refused = True
            raise

    def _start(self, event: Event) -> None:
        if self.streaming:
            raise ProtocolError("audio-start-twice", "audio-start came again before audio-stop")
        try:
            fmt = PcmFormat.parse(event.data)
        except FormatError as exc:
            raise ProtocolError("unsupported-audio-format", str(exc)) from exc
        self.streaming = True
        if self.refused:
            return
        if self.request is None:  # no transcribe first: the default model, language detected or English
            try:
                self.request = self.voice.resolve(None, None)
            except RequestError:
                self.refused = True
                raise
        self.stream = PcmStream(fmt, self.voice.max_seconds)

    def _chunk(self, event: Event) -> None:
        if not self.streaming:
            raise ProtocolError("audio-chunk-before-start", "audio-chunk came before audio-start")
        if self.refused or self.stream is None:
            return
        try:
            fmt = PcmFormat.parse(event.data)
        except FormatError as exc:
            raise ProtocolError("unsupported-audio-format", str(exc)) from exc
        if fmt != self.stream.format:
            raise ProtocolError(
                "audio-format-changed", f"audio-chunk is {fmt}, audio-start announced {self.stream.format}"
            )
        try:
            self.stream.add(event.payload or b"")
        except TooLong as exc:
            raise ProtocolError(
                "audio-too-long",
                f"a command is limited to {self.voice.max_seconds:g} s of audio (WT_WYOMING_MAX_SECONDS): {exc}",
            ) from exc

    async def _stop(self) -> None:
        if not self.streaming:
            raise ProtocolError("audio-stop-before-start", "audio-stop came before audio-start")
        stopped = time.perf_counter()
        request, stream, refused = self.request, self.stream, self.refused
        self.request, self.stream, self.streaming, self.refused = None, None, False, False
        if refused or request is None or stream is None:
            return  # the refusal was answered when it happened
        samples = stream.finish()
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self.voice.engine_pool, self.voice.transcribe, request, samples)
        except Exception:
            log.exception("wyoming: transcribing a command of %.1f s on %s failed", stream.seconds, request.model)
            self.voice.count("error")
            await self.write_event(
                Error(text="transcription failed; see the system log", code="transcription-failed").event()
            )
            return
        await self.write_event(Transcript(text=result.text, language=result.language).event())
        latency = time.perf_counter() - stopped
        log.info("wyoming: %.1f s of audio on %s in %.3f s: %r", stream.seconds, request.model, latency, result.text)
        self.voice.count("ok", latency, stream.seconds)

    async def _linger(self) -> None:
        """Close our side, then read and drop what the client still sends, for a moment, before closing.

        Closing a socket with unread data in it sends a reset, and a reset can make the client drop the
        error event it has not read yet (a client streaming ten minutes of audio has plenty in flight).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LINGER_SECONDS
        with contextlib.suppress(ConnectionError, OSError, TimeoutError, RuntimeError):
            if self.writer.can_write_eof():
                self.writer.write_eof()
            while (remaining := deadline - loop.time()) > 0:
                if not await asyncio.wait_for(self.reader.read(MAX_DATA_BYTES), remaining):
                    break

    async def _error(self, code: str, text: str) -> None:
        """Send an error event (counted); a client that already left is no error of ours."""
        log.info("wyoming: %s: %s", code, text)
        self.voice.count("error")
        with contextlib.suppress(ConnectionError, OSError):
            await self.write_event(Error(text=text, code=code).event())


async def _serve(voice: Voice, host: str, port: int) -> None:
    writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.add(writer)
        try:
            await CommandHandler(voice, reader, writer).run()
        finally:
            writers.discard(writer)

    # asyncio's own listener rather than the package's server class: the same TCP, with the header limit.
    listener = await asyncio.start_server(handle, host=host, port=port, limit=MAX_HEADER_BYTES)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("wyoming: serving on tcp://%s:%d", host, port)
    print(f"Wyoming speech-to-text on tcp://{host}:{port}", flush=True)
    await stop.wait()
    log.info("wyoming: stopping")
    listener.close()
    for writer in list(writers):  # their handlers read end-of-stream and finish
        writer.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(listener.wait_closed(), timeout=5)


def serve(settings: Mapping[str, Any]) -> int:
    """Warm the engine, then serve on WYOMING_HOST:WYOMING_PORT until SIGTERM or SIGINT; the exit code."""
    voice = Voice(settings)
    try:
        voice.warm_up()
    except RequestError as exc:
        log.error("wyoming: %s", exc.text)
        print(f"wyoming: {exc.text}", flush=True)
        return 1
    try:
        asyncio.run(_serve(voice, str(settings["WYOMING_HOST"]), int(settings["WYOMING_PORT"])))
    finally:
        voice.close()
    return 0
