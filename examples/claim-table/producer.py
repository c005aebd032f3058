"""Stores a message and the task that processes it in one transaction, from Python.

psycopg 3 and holdfast's SQL API only: `python3 producer.py DATABASE_URL WORK_UNIT BODY...`.
"""

import sys

import psycopg
from psycopg.types.json import Jsonb


def save_message(conn: psycopg.Connection, work_unit: str, body: str) -> int:
    # One transaction: the message and its task commit together, or neither does.
    with conn.transaction():
        (message_id,) = conn.execute(
            "insert into messages (work_unit, body) values (%s, %s) returning id",
            (work_unit, body),
        ).fetchone()
        conn.execute(
            "select holdfast.enqueue(%s, %s, dedupe_key => %s)",
            ("process-messages", work_unit, f"messages:{work_unit}"),
        )
    return message_id


def import_messages(conn: psycopg.Connection, messages: list[tuple[str, str]]) -> None:
    # Many messages and their tasks: one statement each, still one transaction.
    with conn.transaction():
        with conn.cursor() as cur:
            cur.executemany(
                "insert into messages (work_unit, body) values (%s, %s)", messages
            )
        tasks = [{"key": unit, "dedupe_key": f"messages:{unit}"} for unit, _ in messages]
        conn.execute(
            "select id, deduped from holdfast.enqueue_many(%s, %s)",
            ("process-messages", Jsonb(tasks)),
        )


if __name__ == "__main__":
    url, work_unit, *bodies = sys.argv[1:]
    with psycopg.connect(url) as conn:
        for body in bodies:
            print(save_message(conn, work_unit, body))
