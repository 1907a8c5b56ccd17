"""`abtest doctor`: check what the platform needs (settings, database, migrations, Redis, the
teacher endpoint, model files) and say what is wrong and how to fix it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from abtest import db
from abtest.settings import Settings, SettingsError, load_settings

OK, WARN, FAIL = "ok", "warning", "FAIL"


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # OK, WARN or FAIL
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_checks(timeout_s: float = 3.0) -> list[Check]:
    """Every check, in the order a newcomer would fix them; stops early only when the settings
    themselves cannot be read."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        return [Check("settings", FAIL, str(exc))]
    checks = [Check("settings", OK, "every ABTEST_ variable is known and valid")]
    database = check_database(settings.database_url)
    checks.append(database)
    variants: list[Any] = []
    if database.status == OK:
        migrations = check_migrations(settings.database_url)
        checks.append(migrations)
        if migrations.status == OK:
            variants = _variants(settings.database_url)
    checks.append(check_redis(settings.redis_url, timeout_s))
    checks.append(check_teacher(settings, variants, timeout_s))
    checks.extend(check_model_files(variants))
    return checks


def check_database(url: str) -> Check:
    try:
        db.check_can_open(url, create=False)
    except db.DatabaseUnavailable as exc:
        return Check("database", FAIL, str(exc))
    return Check("database", OK, f"opened {db.shown_url(url)}")


def check_migrations(url: str) -> Check:
    engine = db.get_engine(url)
    current, head = db.current_revision(engine), db.head_revision()
    if current == head:
        return Check("migrations", OK, f"at the latest migration {head}")
    where = "empty" if current is None else f"at {current}"
    return Check(
        "migrations", FAIL, f"the database is {where}, not {head}: run `abtest db upgrade`"
    )


def check_redis(url: str | None, timeout_s: float) -> Check:
    if url is None:
        return Check(
            "redis", OK, "ABTEST_REDIS_URL unset: in-process caches (set it for several workers)"
        )
    import redis

    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        client.ping()
    except redis.RedisError as exc:
        return Check("redis", FAIL, f"ABTEST_REDIS_URL={url}: {exc}; start Redis or fix the URL")
    finally:
        client.close()
    return Check("redis", OK, f"{url} answers PING")


def check_teacher(settings: Settings, variants: list[Any], timeout_s: float) -> Check:
    teachers = [v.name for v in variants if v.kind == "teacher"]
    used_by = f" (used by {', '.join(teachers)})" if teachers else ""
    base_url = settings.openai_base_url
    if base_url is None and settings.openai_api_key is None:
        status = FAIL if teachers else WARN
        return Check(
            "teacher",
            status,
            f"neither OPENAI_API_KEY nor OPENAI_BASE_URL is set{used_by}: the teacher arm "
            "cannot answer; set one (or ABTEST_OPENAI_API_KEY / ABTEST_OPENAI_BASE_URL)",
        )
    import httpx

    url = (base_url or "https://api.openai.com/v1").rstrip("/") + "/models"
    key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else ""
    try:
        response = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return Check(
            "teacher",
            FAIL if teachers else WARN,
            f"{url} is unreachable ({type(exc).__name__}: {exc}){used_by}: "
            "start the server or fix OPENAI_BASE_URL",
        )
    if response.status_code in (401, 403):
        return Check(
            "teacher", FAIL, f"{url} refused the key ({response.status_code}): fix OPENAI_API_KEY"
        )
    if response.status_code >= 400:
        return Check("teacher", WARN, f"{url} answered {response.status_code}{used_by}")
    return Check("teacher", OK, f"{url} answers{used_by}")


def check_model_files(variants: list[Any]) -> list[Check]:
    """A `local_student` (or pickled kNN) variant's `path` must exist on this machine."""
    checks = []
    for variant in variants:
        path = (variant.config or {}).get("path")
        if variant.kind not in ("local_student", "knn_student") or not path:
            continue
        name = f"model files of {variant.name}"
        if Path(path).exists():
            checks.append(Check(name, OK, str(path)))
        else:
            checks.append(
                Check(name, FAIL, f"{path} does not exist: copy the model there or re-register")
            )
    return checks


def _variants(url: str) -> list[Any]:
    from abtest import services

    with db.session_scope(db.get_engine(url)) as session:
        return [
            v for v in services.list_variants(session) if v.status not in ("retired", "archived")
        ]
