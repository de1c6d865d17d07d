"""Root transforms that read a snapshot from a warehouse, as batches for `transforms.snapshot.DiffSnapshot`.

`ReadWarehouseSlices` (DuckDB, PostgreSQL): a Create of slice ids, a Reshuffle so a distributed
runner hands the slices to different workers, and a ParDo that reads one slice in record batches of
``plan.batch_rows`` rows. A worker holds one batch (plus the driver's own buffer), not its slice.

`ReadBigQueryRows` (BigQuery, Dataflow): Beam's ReadFromBigQuery with the Storage Read API, which
splits the read into streams itself; its dict rows become lists of value tuples, as Avro rows do.

The password is read when a slice connects, from the plan's `PasswordSource` (an env var or a file
on the worker): the graph, its options and the pickled functions carry only where it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam

from closecrm.reverse_etl.warehouse import ReadPlan, connect

SLICES_READ = "snapshot_slices_read"


def read_slice(slice_id: int, plan: ReadPlan) -> Iterator[Any]:
    """One slice id → pyarrow Tables of ``plan.batch_rows`` rows of that slice.

    A function, not a DoFn with a connection held from setup: a slice is one query, and the
    connection (and the password read for it) lives only while that query streams.
    """
    from transforms import metrics

    with connect(plan.source) as con:
        yield from con.batches(plan.slice_sql(slice_id), plan.batch_rows)
    metrics.counter(SLICES_READ).inc()


class ReadWarehouseSlices(beam.PTransform):
    """The plan's rows from DuckDB or PostgreSQL, read slice by slice by as many workers as there are."""

    def __init__(self, plan: ReadPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return (
            pbegin
            | "SliceIds" >> beam.Create(list(range(self._plan.slices)))
            | "SpreadSlices" >> beam.Reshuffle()
            | "ReadSlice" >> beam.FlatMap(read_slice, self._plan)
        )


def _values(row: dict[str, Any], columns: tuple[str, ...]) -> tuple[Any, ...]:
    return tuple(row.get(c) for c in columns)


class ReadBigQueryRows(beam.PTransform):
    """The plan's rows from BigQuery as lists of up to ``plan.batch_rows`` value tuples."""

    def __init__(self, plan: ReadPlan) -> None:
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        from apache_beam.io.gcp.bigquery import ReadFromBigQuery

        plan = self._plan
        source = plan.source
        project = source.url.database
        if source.table is not None and not plan.as_text:
            parts = source.table.replace(":", ".").split(".")
            table = f"{parts[0]}:{'.'.join(parts[1:])}" if len(parts) == 3 else f"{project}:{source.table}"
            where = plan.where()
            read = ReadFromBigQuery(
                table=table,
                method=ReadFromBigQuery.Method.DIRECT_READ,
                selected_fields=list(plan.columns),
                row_restriction=" AND ".join(where) if where else None,
                project=project,
            )
        else:
            read = ReadFromBigQuery(
                query=plan.slice_sql(0),
                use_standard_sql=True,
                method=ReadFromBigQuery.Method.DIRECT_READ,
                project=project,
            )
        return (
            pbegin
            | "ReadFromBigQuery" >> read
            | "RowValues" >> beam.Map(_values, plan.columns)
            | "BatchRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=plan.batch_rows)
        )


def reader_for(plan: ReadPlan) -> beam.PTransform:
    """The root transform that reads ``plan``'s source."""
    if plan.source.dialect == "bigquery":
        return ReadBigQueryRows(plan)
    return ReadWarehouseSlices(plan)
