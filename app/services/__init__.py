"""Business rules shared by every dialect's routes and by the workers."""
