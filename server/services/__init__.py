"""Business logic behind the routes. Never imports Starlette."""
