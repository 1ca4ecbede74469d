"""Default settings. Environment variables (``WT_*`` and the seed names) override them.

See ``app/settings.py`` for how the layers are combined and README.md for the table.
"""

ENV = "development"  # "production" refuses to start with a missing or weak SECRET_KEY
DATA_DIR = "./data"
MODELS_DIR = None  # default: $DATA_DIR/models
HOST = "127.0.0.1"
PORT = 8000

SECRET_KEY = None  # generated and kept in $DATA_DIR/secret_key when unset
JWT_EXPIRES_SECONDS = 3600
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = None  # generated and printed once when there is no admin yet
ALLOW_REGISTRATION = False
ENABLE_SERVER_CONTROL = False

MAX_CONTENT_LENGTH = 2 * 1024**3  # bytes per request
MAX_MEDIA_SECONDS = 4 * 3600
FFMPEG_TIMEOUT_SECONDS = 900
DEFAULT_MODEL = "tiny.en"
ENGINE_THREADS = 0  # 0: all cores
MAX_ATTEMPTS = 3
QUEUE_POLL_SECONDS = 0.25

RATELIMIT_STORAGE_URI = "memory://"
TRUSTED_PROXIES = 0
