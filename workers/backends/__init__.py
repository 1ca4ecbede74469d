"""Speech engine backends behind the one ``workers.engine.Engine`` interface."""
