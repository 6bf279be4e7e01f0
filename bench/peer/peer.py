"""The Python peer of msk-sync: what a competent team would deploy instead, measured per batch, warm.

    python bench/peer/peer.py SQLALCHEMY_URL ROUNDS EVENT.json...

Powertools for AWS Lambda's `kafka_consumer` decodes the records (base64, JSON); the batch is collapsed per
planet in timestamp order (the last change of a planet wins; DELETED deletes it); then SQLAlchemy Core writes it
in one transaction: one bulk `INSERT … ON CONFLICT DO UPDATE` (MySQL: `ON DUPLICATE KEY UPDATE`) through
executemany, and one `DELETE … WHERE uuid IN (…)`. The engine is made once and stays connected, as in a warm
Lambda instance. The table is planet-sync's: servicea_planet (uuid primary key, name).

Each event file is read once; every batch of every round then pays `json.loads` of the payload (the Python
runtime's own work per invocation), the handler and the commit. The first round warms up (connects, creates the
table, fills caches) and is not reported. Prints one JSON line per measured batch:
{"round": R, "file": I, "records": N, "seconds": S}. bench/benches/peer.rs runs it (setup: bench/peer/setup.sh).
"""

import json
import sys
import time

from aws_lambda_powertools.utilities.kafka import SchemaConfig, kafka_consumer
from sqlalchemy import Column, MetaData, String, Table, create_engine, delete

metadata = MetaData()
planet = Table(
    "servicea_planet",
    metadata,
    Column("uuid", String(255), primary_key=True),
    Column("name", String(255), nullable=False),
)


def upsert_statement(dialect):
    """The dialect's bulk upsert of planet rows: every column but the key updated on conflict."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert

        stmt = insert(planet)
        return stmt.on_conflict_do_update(index_elements=["uuid"], set_={"name": stmt.excluded.name})
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert

        stmt = insert(planet)
        return stmt.on_conflict_do_update(index_elements=["uuid"], set_={"name": stmt.excluded.name})
    if dialect in ("mysql", "mariadb"):
        from sqlalchemy.dialects.mysql import insert

        stmt = insert(planet)
        return stmt.on_duplicate_key_update(name=stmt.inserted.name)
    raise SystemExit(f"peer.py: no upsert for dialect {dialect}")


def main():
    url, rounds, files = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    engine = create_engine(url)
    metadata.create_all(engine)
    upsert = upsert_statement(engine.dialect.name)

    @kafka_consumer(schema_config=SchemaConfig(value_schema_type="JSON"))
    def handler(event, context):
        latest = {}
        # Timestamp order; Python's sort is stable, so records of one timestamp keep the event's order.
        for record in sorted(event.records, key=lambda r: r.timestamp):
            message = record.value
            change = message.get("changeType")
            if change not in (None, "CREATED", "UPDATED", "DELETED"):
                continue  # bedrock dead-letters these; the generated batches have none
            latest[message["planetUuid"]] = message
        rows = []
        deleted = []
        for uuid, message in latest.items():
            if message.get("changeType") == "DELETED":
                deleted.append(uuid)
            else:
                rows.append({"uuid": uuid, "name": message["planetName"]})
        with engine.begin() as conn:
            if rows:
                conn.execute(upsert, rows)
            if deleted:
                conn.execute(delete(planet).where(planet.c.uuid.in_(deleted)))
        return {"upserted": len(rows), "deleted": len(deleted)}

    payloads = []
    for name in files:
        with open(name, "rb") as f:
            payloads.append(f.read())
    for round in range(rounds + 1):
        for i, payload in enumerate(payloads):
            start = time.perf_counter()
            event = json.loads(payload)
            handler(event, None)
            seconds = time.perf_counter() - start
            if round > 0:
                records = sum(len(r) for r in event["records"].values())
                print(json.dumps({"round": round, "file": i, "records": records, "seconds": seconds}), flush=True)
            del event


if __name__ == "__main__":
    main()
