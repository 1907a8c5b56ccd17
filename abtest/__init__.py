"""abtest: the platform layer. Settings, database, ORM tables, the variant and experiment
services (the only code that writes those tables), the FastAPI app and the Typer CLI.

Depends on `routing`, `analysis` and `models`; none of them imports `abtest`.
"""

__version__ = "0.1.0"
