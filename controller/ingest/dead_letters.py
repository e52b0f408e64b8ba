"""Storing dead letters: what the ``DeadLetterBook`` aggregated, written and capped.

The book (``controller/ingest/limits.py``) decides what becomes a row; this shell writes
its drains in one short transaction of their own (never the ingest batch's: a flood of
refusals must not slow the good messages' writes) and then prunes the oldest rows past the
caps, per device and in total, so the table cannot fill the disk whatever arrives.
"""

from sqlalchemy import delete, func, update
from sqlmodel import Session, col, select

from controller.ingest.limits import Drained
from controller.ingest.tables import RejectedMessage

__all__ = ["prune_dead_letters", "write_dead_letters"]


def write_dead_letters(session: Session, drained: list[Drained]) -> set[str | None]:
    """Add each drain's count to its row (inserting the rows not stored yet); returns the
    devices touched, for the per-device cap."""
    inserted: list[tuple[Drained, RejectedMessage]] = []
    for item in drained:
        letter = item.letter
        if letter.row_id is not None:
            updated = session.execute(
                update(RejectedMessage)
                .where(col(RejectedMessage.id) == letter.row_id)
                .values(count=RejectedMessage.count + item.count, last_at=item.last_at)
            )
            if getattr(updated, "rowcount", 0):
                continue  # else the row was pruned meanwhile: a new one below
        row = RejectedMessage(
            received_at=letter.first_at,
            last_at=item.last_at,
            device_id=letter.device_id,
            topic=_storable(letter.topic)[:256],
            reason=_storable(letter.reason)[:64],
            detail=_storable(letter.detail)[:1024],
            size=letter.size,
            count=item.count,
        )
        session.add(row)
        inserted.append((item, row))
    session.flush()
    for item, row in inserted:
        item.letter.row_id = row.id
    return {item.letter.device_id for item in drained}


def _storable(text: str) -> str:
    """``text`` without NUL, which PostgreSQL text cannot hold (and without lone
    surrogates, which no UTF-8 column can): a dead letter must never fail its insert."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _prune_older(session: Session, where: list[object], keep: int) -> int:
    """Delete the rows matching ``where`` older than its ``keep`` newest; returns how many
    rejections (the rows' counts) went with them."""
    cutoff = session.exec(
        select(RejectedMessage.id)
        .where(*where)  # type: ignore[arg-type]
        .order_by(col(RejectedMessage.id).desc())
        .offset(keep)
        .limit(1)
    ).first()
    if cutoff is None:
        return 0
    old = [col(RejectedMessage.id) <= cutoff, *where]
    lost = session.exec(
        select(func.coalesce(func.sum(RejectedMessage.count), 0)).where(*old)  # type: ignore[arg-type]
    ).one()
    session.execute(delete(RejectedMessage).where(*old))  # type: ignore[arg-type]
    return int(lost)


def prune_dead_letters(
    session: Session, devices: set[str | None], *, per_device: int, total: int
) -> int:
    """Keep at most ``per_device`` rows for each of ``devices`` and ``total`` rows in all,
    the newest; returns how many rejections the deleted rows stood for."""
    lost = 0
    named = [d for d in devices if d is not None]
    over: list[str | None] = []
    if named:
        over += [
            device
            for device, n in session.exec(
                select(RejectedMessage.device_id, func.count())
                .where(col(RejectedMessage.device_id).in_(named))
                .group_by(col(RejectedMessage.device_id))
            )
            if n > per_device
        ]
    if None in devices:
        over.append(None)  # topics that name no device share one allowance
    for device in over:
        match = (
            col(RejectedMessage.device_id).is_(None)
            if device is None
            else col(RejectedMessage.device_id) == device
        )
        lost += _prune_older(session, [match], per_device)
    if int(session.exec(select(func.count()).select_from(RejectedMessage)).one()) > total:
        lost += _prune_older(session, [], total)
    return lost
