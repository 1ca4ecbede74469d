"""Queue tasks, the media pipeline and the whisper.cpp engine."""
