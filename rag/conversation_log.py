"""The conversation log: every exchange, the chunks it retrieved and the student's feedback, in any SQLAlchemy database."""
from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Literal, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, selectinload

from rag.errors import VimathError

if TYPE_CHECKING:
    from rag.answering import Answer

FeedbackFilter = Literal["up", "down", "any", "none"]
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_T = TypeVar("_T")


class LogUnavailable(VimathError, RuntimeError):
    """The log database cannot be read or written now (locked, unreachable, full...).

    The message names the database (without its password) and the driver's one-line reason, never the SQL.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"The conversation log at {where} is unavailable: {reason}. Check that the database is "
                         "reachable and not held by another program (e.g. an open SQLite browser), then retry.")
        self.where, self.reason = where, reason


def public_url(url: str | sa.URL) -> str:
    """A database URL as it may be shown: without its password."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "(invalid database URL)"


def _reason(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's own message (e.g. "database is locked"), first line only: SQLAlchemy's text adds the SQL."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _guarded(method: Callable[..., _T]) -> Callable[..., _T]:
    """Database failures of a ConversationLog method become LogUnavailable; the caller's own mistakes pass through."""

    @functools.wraps(method)
    def wrapper(self: "ConversationLog", *args: Any, **kwargs: Any) -> _T:
        try:
            return method(self, *args, **kwargs)
        except sa.exc.SQLAlchemyError as exc:
            raise LogUnavailable(public_url(self.engine.url), _reason(exc)) from exc

    return wrapper


class Base(DeclarativeBase):
    pass


class ExchangeRecord(Base):
    """One question and its answer."""

    __tablename__ = "exchanges"

    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[str] = mapped_column(sa.String(64), index=True)
    # Naive UTC: SQLite keeps no time zone, and the same values must compare alike on PostgreSQL.
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(), index=True)
    question: Mapped[str] = mapped_column(sa.Text())
    standalone_question: Mapped[str] = mapped_column(sa.Text())
    answer_text: Mapped[str] = mapped_column(sa.Text())
    status: Mapped[str] = mapped_column(sa.String(32))
    notice: Mapped[str] = mapped_column(sa.Text(), default="")
    model: Mapped[str] = mapped_column(sa.String(200))
    prompt_version: Mapped[str] = mapped_column(sa.String(200))
    timings: Mapped[dict[str, Any]] = mapped_column(sa.JSON())
    details: Mapped[dict[str, Any]] = mapped_column(sa.JSON())
    best_score: Mapped[float | None] = mapped_column(sa.Float(), index=True)
    # Who asked: None for the Streamlit chat, the API key's name (never the key) for the HTTP API.
    # Added after the first release: ConversationLog adds the column to older databases.
    client: Mapped[str | None] = mapped_column(sa.String(100), nullable=True, default=None)
    chunks: Mapped[list[RetrievedChunkRecord]] = relationship(
        back_populates="exchange", order_by="RetrievedChunkRecord.rank", cascade="all, delete-orphan")
    feedback: Mapped[FeedbackRecord | None] = relationship(back_populates="exchange", cascade="all, delete-orphan")


class RetrievedChunkRecord(Base):
    """A chunk retrieved for an exchange, at its rank, and whether the answer cited it."""

    __tablename__ = "retrieved_chunks"

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(sa.ForeignKey("exchanges.id", ondelete="CASCADE"), index=True)
    rank: Mapped[int] = mapped_column(sa.Integer())
    chunk_id: Mapped[str] = mapped_column(sa.String(128), index=True)
    source: Mapped[str] = mapped_column(sa.String(500))
    heading: Mapped[str] = mapped_column(sa.Text())
    score: Mapped[float] = mapped_column(sa.Float())
    cited: Mapped[bool] = mapped_column(sa.Boolean(), default=False)
    exchange: Mapped[ExchangeRecord] = relationship(back_populates="chunks")


class FeedbackRecord(Base):
    """The student's 👍/👎 on an answer (the latest one counts) and an optional comment."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(primary_key=True)
    exchange_id: Mapped[int] = mapped_column(sa.ForeignKey("exchanges.id", ondelete="CASCADE"), unique=True)
    rating: Mapped[int] = mapped_column(sa.SmallInteger())
    comment: Mapped[str | None] = mapped_column(sa.Text())
    created_at: Mapped[datetime] = mapped_column(sa.DateTime())
    exchange: Mapped[ExchangeRecord] = relationship(back_populates="feedback")


@dataclass(frozen=True)
class LoggedChunk:
    rank: int
    chunk_id: str
    source: str
    heading: str
    score: float
    cited: bool


@dataclass(frozen=True)
class ExchangeRow:
    """An exchange as the teacher page shows and exports it."""

    id: int
    conversation_id: str
    created_at: datetime
    question: str
    standalone_question: str
    answer_text: str
    status: str
    model: str
    prompt_version: str
    best_score: float | None
    rating: int | None
    comment: str | None
    timings: dict[str, Any] = field(default_factory=dict)
    chunks: tuple[LoggedChunk, ...] = ()
    client: str | None = None

    @property
    def cited_sources(self) -> list[str]:
        return [f"{c.source} › {c.heading}" for c in self.chunks if c.cited]


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def naive_utc(moment: datetime) -> datetime:
    """A datetime as the log stores it: aware ones converted to UTC, naive ones taken as UTC already."""
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _cell(value: Any) -> Any:
    """A CSV cell; text that a spreadsheet would run as a formula is quoted with a leading apostrophe."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in _FORMULA_STARTS:
        return "'" + value
    return value


def _row(record: ExchangeRecord) -> ExchangeRow:
    feedback = record.feedback
    return ExchangeRow(
        id=record.id, conversation_id=record.conversation_id, created_at=record.created_at, question=record.question,
        standalone_question=record.standalone_question, answer_text=record.answer_text, status=record.status,
        model=record.model, prompt_version=record.prompt_version, best_score=record.best_score,
        rating=feedback.rating if feedback else None, comment=feedback.comment if feedback else None,
        timings=dict(record.timings or {}),
        chunks=tuple(LoggedChunk(c.rank, c.chunk_id, c.source, c.heading, c.score, c.cited) for c in record.chunks),
        client=record.client,
    )


def _add_missing_columns(engine: sa.Engine) -> None:
    """Add the nullable columns a newer version declares to a log made by an older one (no migration tool needed:
    the log only ever gains nullable columns)."""
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            with engine.begin() as connection:
                connection.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}'))


def _create_schema(engine: sa.Engine, attempts: int = 3) -> None:
    """Create or upgrade the tables. Several processes (API workers, the chat) may start at once on one PostgreSQL
    database: the loser of a CREATE/ALTER race gets an error, and simply looks again."""
    for attempt in range(attempts):
        try:
            Base.metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except sa.exc.DBAPIError:
            if attempt == attempts - 1:
                raise


class ConversationLog:
    """Records exchanges and feedback, and answers the teacher page's questions about them."""

    def __init__(self, url: str) -> None:
        """Connect and create (or upgrade) the tables; raises LogUnavailable when the database cannot be used."""
        try:
            self.engine = sa.create_engine(url, pool_pre_ping=True)
        except (sa.exc.SQLAlchemyError, ImportError) as exc:  # a malformed URL, or a driver that is not installed
            raise LogUnavailable(public_url(url), str(exc).splitlines()[0]) from exc
        self._create_tables()

    @_guarded
    def _create_tables(self) -> None:
        _create_schema(self.engine)

    @_guarded
    def record(self, conversation_id: str, answer: Answer, client: str | None = None) -> int:
        """Store an answer with its retrieved chunks and who asked (an API key's name); returns the exchange id."""
        cited = set(answer.cited)
        exchange = ExchangeRecord(
            conversation_id=conversation_id, created_at=utcnow(), client=client, question=answer.question,
            standalone_question=answer.standalone_question, answer_text=answer.text, status=answer.status,
            notice=answer.notice, model=answer.model, prompt_version=answer.prompt_version,
            timings=asdict(answer.timings),
            details={"invalid_citations": answer.invalid_citations, "context_size": answer.context_size,
                     "num_ctx": answer.num_ctx, "prompt_tokens": answer.prompt_tokens,
                     "history_turns_used": answer.history_turns_used},
            best_score=max((h.score for h in answer.retrieved), default=None),
            chunks=[RetrievedChunkRecord(rank=rank, chunk_id=hit.id, source=str(hit.metadata.get("source", "")),
                                         heading=str(hit.metadata.get("heading_path", "")), score=hit.score,
                                         cited=rank in cited)
                    for rank, hit in enumerate(answer.retrieved, start=1)],
        )
        with Session(self.engine) as session, session.begin():
            session.add(exchange)
            session.flush()
            return exchange.id

    @_guarded
    def feedback(self, exchange_id: int, rating: int, comment: str | None = None) -> None:
        """Set the feedback of an exchange (+1 or -1), replacing an earlier one."""
        if rating not in (1, -1):
            raise ValueError(f"rating must be +1 or -1, not {rating!r}")
        comment = (comment or "").strip() or None
        with Session(self.engine) as session, session.begin():
            exchange = session.get(ExchangeRecord, exchange_id)
            if exchange is None:
                raise KeyError(f"no exchange {exchange_id}")
            if exchange.feedback is None:
                exchange.feedback = FeedbackRecord(rating=rating, comment=comment, created_at=utcnow())
            else:
                exchange.feedback.rating, exchange.feedback.comment = rating, comment
                exchange.feedback.created_at = utcnow()

    @_guarded
    def exchanges(self, since: datetime | None = None, until: datetime | None = None, feedback: FeedbackFilter | None = None,
                  max_best_score: float | None = None) -> list[ExchangeRow]:
        """Exchanges, newest first: in [since, until), by feedback, and those whose best chunk scored at most max_best_score."""
        query = sa.select(ExchangeRecord).outerjoin(ExchangeRecord.feedback)
        if since is not None:
            query = query.where(ExchangeRecord.created_at >= naive_utc(since))
        if until is not None:
            query = query.where(ExchangeRecord.created_at < naive_utc(until))
        if feedback == "up":
            query = query.where(FeedbackRecord.rating > 0)
        elif feedback == "down":
            query = query.where(FeedbackRecord.rating < 0)
        elif feedback == "any":
            query = query.where(FeedbackRecord.id.is_not(None))
        elif feedback == "none":
            query = query.where(FeedbackRecord.id.is_(None))
        if max_best_score is not None:
            # Nothing retrieved at all is the poorest coverage there is.
            query = query.where(sa.or_(ExchangeRecord.best_score <= max_best_score, ExchangeRecord.best_score.is_(None)))
        return self._rows(query)

    @_guarded
    def questions_citing(self, chunk_id: str) -> list[ExchangeRow]:
        """Exchanges whose answer cited the chunk, newest first."""
        cited = sa.select(RetrievedChunkRecord.exchange_id).where(
            RetrievedChunkRecord.chunk_id == chunk_id, RetrievedChunkRecord.cited.is_(True))
        return self._rows(sa.select(ExchangeRecord).where(ExchangeRecord.id.in_(cited)))

    def _rows(self, query: sa.Select[Any]) -> list[ExchangeRow]:
        query = query.options(selectinload(ExchangeRecord.chunks), selectinload(ExchangeRecord.feedback))
        with Session(self.engine) as session:
            records = session.scalars(query.order_by(ExchangeRecord.created_at.desc(), ExchangeRecord.id.desc())).unique()
            return [_row(r) for r in records]

    @staticmethod
    def to_csv(rows: Sequence[ExchangeRow]) -> str:
        """The rows as CSV (UTF-8 text; timings as JSON, cited chunks joined by ' | ')."""
        columns = [f.name for f in fields(ExchangeRow) if f.name != "chunks"] + ["cited_sources"]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            values = {**{name: getattr(row, name) for name in columns[:-1]}, "cited_sources": " | ".join(row.cited_sources)}
            values["created_at"] = row.created_at.isoformat(timespec="seconds")
            values["timings"] = json.dumps(row.timings, ensure_ascii=False)
            writer.writerow([_cell(values[c]) for c in columns])
        return out.getvalue()

    def close(self) -> None:
        self.engine.dispose()
