"""Default settings. Environment variables override them: ``WT_*``, and the bare names the API documents
use, such as ``API_USER``.

See ``app/settings.py`` for how the layers are combined and README.md for the table.
"""

ENV = "development"  # "production" refuses to start with a missing or weak SECRET_KEY
DATA_DIR = "./data"
MODELS_DIR = None  # default: $DATA_DIR/models
HOST = "127.0.0.1"
PORT = 8000
# A request's headers must arrive within this many seconds, and its body (or the reading of an answer) may
# pause no longer; the connection is closed past either (slow clients never hold request threads meanwhile).
CLIENT_IDLE_SECONDS = 30.0
# Gunicorn threads that answer requests (WebSockets and long polls hold one each); a quarter as many
# more (at least 4) stream large request bodies.
WEB_THREADS = 64
# Gunicorn processes; more than 1 needs shared rate limits (Redis: QUEUE_URL or RATELIMIT_STORAGE_URI).
WEB_PROCESSES = 1

SECRET_KEY = None  # generated and kept in $DATA_DIR/secret_key when unset
JWT_EXPIRES_SECONDS = 3600
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = None  # generated and printed once when there is no admin yet
ALLOW_REGISTRATION = False
ENABLE_SERVER_CONTROL = False

MAX_CONTENT_LENGTH = 2 * 1024**3  # bytes per request
MAX_CHUNK_SIZE = 64 * 1024**2  # bytes per chunk of a chunked upload (the file itself: MAX_CONTENT_LENGTH)
CHUNK_SESSION_TTL_SECONDS = 3600  # a chunked upload expires this long after its last chunk
MAX_UPLOAD_SESSIONS_PER_USER = 10  # open chunked uploads per user; each reserves disk until finished
MAX_MEDIA_SECONDS = 4 * 3600
# Below this much free space on the data disk uploads are refused (507) and /health says "disk": "low";
# the rest keeps the database, the logs and queued jobs working. 0 turns the floor off.
MIN_FREE_MB = 500
FFMPEG_TIMEOUT_SECONDS = 900
DEFAULT_MODEL = "tiny.en"
# Model names clients ask for, answered by an installed model: "medium=base,small=base" (the full-API
# examples ask for medium). Admins can replace the map on the settings page (POST /admin/settings).
MODEL_ALIASES = ""
# auto: the calibration decides per job (whisper-transcriber tune); whispercpp or ctranslate2 force one engine.
ENGINE = "auto"
TUNE_ON_START = True  # `run` calibrates the engines once in the background when this box has no record yet
ENGINE_THREADS = 0  # 0: all cores
WORKERS = 0  # worker processes under `run`; 0: the calibrated layout (else 1); POST /admin/concurrency overrides
# A worker is replaced by a fresh process between jobs once its resident memory passes this many MB.
# 0: sized for the model (1024 MB, or 512 MB plus 3x the largest model file it ran when that is more); -1: never.
WORKER_MAX_RSS_MB = 0
WORKER_MAX_JOBS = 0  # ... or after this many jobs; 0: never
WORKER_NICE = 10  # CPU priority of the workers (0-19, higher is lower): the web server gets the CPU first
# Set per systemd instance (whisper-transcriber-worker@N: WT_WORKER_INDEX=N): worker N waits on standby
# while fewer than N workers are wanted. 0: not numbered, always works.
WORKER_INDEX = 0
MAX_ATTEMPTS = 3
QUEUE_POLL_SECONDS = 1.0  # idle workers look at the queue this often; an enqueue wakes them at once

# More than one box (docs/scale-out.md). Empty: the single box's SQLite file $DATA_DIR/whisper.db, and the
# SQLite queue $DATA_DIR/queue.db. postgresql://user:password@host/name and redis://host:6379/0 share them.
DATABASE_URL = ""
QUEUE_URL = ""
# Each worker's name, shown on the admin page; unique per box. Empty: the host name.
WORKER_NAME = ""
# The system logs (app, access, processing). Empty: $DATA_DIR/logs. On a box whose data dir is a share of
# another box (docs/scale-out.md), a local folder, so two boxes never append to and rotate the same file.
# Job logs stay in $DATA_DIR/logs/jobs, where every web server reads them.
LOG_DIR = ""
# A worker holds its running job under a lease it renews every third of this; a job whose lease ran out (its
# worker died, or lost the network) goes back to the queue, counting an attempt. Workers of the same box
# are checked by their pid at once.
LEASE_SECONDS = 60
# The engine breaker's state: empty: the Redis of QUEUE_URL when there is one, else the database; "database".
BREAKER_STORAGE_URL = ""

# Rate limits (flask-limiter strings, "N per minute;M per day"). memory:// suits the single Gunicorn
# process; with more processes point RATELIMIT_STORAGE_URI at shared storage such as redis://host:6379.
# Empty: QUEUE_URL when that is redis://, else memory://.
RATELIMIT_STORAGE_URI = ""
RATELIMIT_ENABLED = True
RATELIMIT_ANON = "60 per minute"  # per client address
RATELIMIT_USER = "300 per minute"  # per user; also API keys without their own limit
RATELIMIT_ADMIN = "100 per minute"  # /admin/* per caller, on top of the above
RATELIMIT_CHUNKS = "3000 per minute"  # chunks of chunked uploads per caller (8 MiB chunks: ~3 GiB/s)
RATELIMIT_LOGIN_FAILURES = "10 per minute"  # failed logins per client address and username
RATELIMIT_VOXIS = "30 per minute"  # the VOXIS API (/api/upload, /api/process, ...) per client address, shared
TRUSTED_PROXIES = 0  # reverse proxies in front of the app; X-Forwarded-For is honoured only when > 0
# Comma-separated CIDRs whose clients may call the dialects that define no authentication (VOXIS) without
# credentials, as a non-admin service user, rate-limited per address and audited. Empty: nobody (closed).
ANONYMOUS_NETWORKS = ""

OPENAI_TIMEOUT_SECONDS = 600  # /v1/audio/* waits this long, then answers 504 with the job id
# /asr and /detect-language (whisper-asr-webservice, Bazarr) wait this long, then answer 504 with the job id;
# a little under Bazarr's default timeout of an hour, so Bazarr reads the answer instead of timing out itself.
ASR_TIMEOUT_SECONDS = 3300
# POST /jobs/{id}/analyze (the legacy API): a chat-completions endpoint when a key is set, else a local analysis.
OPENAI_API_KEY = None  # sent to OPENAI_BASE_URL only, never logged
OPENAI_BASE_URL = "https://api.openai.com/v1"  # any OpenAI-compatible server (.../chat/completions)
OPENAI_MODEL = "gpt-4o-mini"
ANALYSIS_TIMEOUT_SECONDS = 60  # per request to the chat model

# Logs: JSON lines in $DATA_DIR/logs (system.log, processing.log, access.log), rotated by size.
LOG_LEVEL = "INFO"  # of the app's logs, the console and Gunicorn's: DEBUG, INFO, WARNING or ERROR
ACCESS_LOG = True  # one line per HTTP request in access.log
GUNICORN_ACCESS_LOG = None  # WT_ACCESS_LOG: a file for Gunicorn's own plain-text access log too ("-": stdout)
LOG_MAX_BYTES = 10 * 1024**2  # per file, before it is renamed to .1
LOG_BACKUPS = 5  # rotated files kept per log
WS_PING_INTERVAL = 25  # seconds between WebSocket pings (0: none)
WS_MAX_CONNECTIONS = 32  # live-log sockets per web process; keep below WT_WEB_THREADS so HTTP keeps threads
BREAKER_FAIL_MAX = 3  # consecutive engine failures that pause new work
BREAKER_RESET_SECONDS = 60  # how long new work is refused before a trial job runs
SIDECAR_OVERWRITE = False  # replace an existing <name>.<lang>.srt next to library media

# Dubbing (a spoken track for video jobs with dub=<lang>): offline by default (whisper translates to English,
# espeak-ng speaks); a chat model (OPENAI_BASE_URL) translates into other languages, a TTS server speaks better.
DUB_LANGUAGE = "en"  # the target of dub=true; other than English needs the chat model
DUB_MAX_TEMPO = 1.6  # a clip longer than its segment is sped up at most this much, then runs into the silence after
DUB_MUX_LIBRARY = False  # library media: a muxed copy in the cache instead of a <name>.<lang>.dub.m4a sidecar
DUBARR_DUB = True  # Dubarr's /upload and /webhook dub video (dub=DUB_LANGUAGE) once a multilingual model is installed
TTS_BASE_URL = None  # an OpenAI-compatible /v1/audio/speech server (speaches, Kokoro, Piper, OpenAI); unset: espeak-ng
TTS_MODEL = "tts-1"
TTS_VOICE = "alloy"
TTS_API_KEY = None  # sent to TTS_BASE_URL only, never logged
DUB_TIMEOUT_SECONDS = 60  # per request to the chat model or the speech server, and per ffmpeg/espeak-ng run
# Home Assistant's speech-to-text over the Wyoming protocol (whisper-transcriber wyoming; `run` starts it when
# enabled). Wyoming has no authentication: it listens on WYOMING_HOST only (127.0.0.1: this machine).
WYOMING_ENABLED = False
WYOMING_HOST = "127.0.0.1"
WYOMING_PORT = 10300
WYOMING_MAX_SECONDS = 30.0  # longest voice command; a client sending more gets an error and is disconnected
MEDIA_ROOTS = ""  # library folders webhooks may name, separated by ":" or ","
WATCH_DIRS = ""  # library folders scanned every minute for new media (sidecar subtitles)
API_USER = ""  # Dubarr-style Basic auth account (acts as the first admin); empty: off
API_PASS = ""
COOKIE_SECURE = False  # set true when the dashboard is served over HTTPS (e.g. behind a TLS proxy)
