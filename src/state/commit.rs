//! Writing the state: delta rows built from the sink's outcomes and appended at
//! checkpoints while a run goes, and the commit that compacts snapshot and deltas into the
//! next snapshot, then names it in a new manifest. Only what Voyado confirmed is recorded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::prelude::{DataFrame, SessionContext};
use object_store::ObjectStoreExt;

use super::StateError;
use super::{
    CONTACT_ID, DeltaOp, IDENTIFIER, Manifest, NewSnapshot, OP, ROW_HASH, STATUS, SnapshotStatus,
    State, manifest, quote, storage,
};
use crate::catalog::temp_view;
use crate::columns::{ChangeKind, KIND, string_column};
use crate::config::Settings;
use crate::error::{Error, Result};

/// What a delta records of one row the sink answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording<'a> {
    /// Delivered as a new contact, with its id when known: an id the row had before
    /// belonged to a contact since deleted.
    Created(Option<&'a str>),
    /// Delivered (updated, or nothing to send), with the id learnt, else the one it had.
    Delivered(Option<&'a str>),
    /// Voyado had no contact with the identifier (a sync that only updates).
    NotFound,
    /// Refused for good by Voyado.
    Rejected,
    /// Deleted from the model: removed from the snapshot.
    Deleted,
}

/// A row's outcome as the state records it; `None` for a row left unconfirmed, which is
/// sent again next run. The sink's outcomes implement it, so the state does not depend on
/// the sink.
pub trait Recorded {
    /// What the state records of this outcome; `None` leaves the row unconfirmed, to be
    /// sent again next run.
    fn recording(&self) -> Option<Recording<'_>>;
}

/// Builds the delta rows for `outcomes` (row index in `staged`, outcome): the snapshot
/// columns for each recorded row plus `_op`. Unconfirmed rows are left out.
pub fn delta_batch<O: Recorded>(
    staged: &RecordBatch,
    outcomes: &[(usize, O)],
    attributes: &[String],
) -> Result<Option<RecordBatch>> {
    let recorded: Vec<(usize, Recording<'_>)> = outcomes
        .iter()
        .filter_map(|(i, o)| o.recording().map(|r| (*i, r)))
        .collect();
    if recorded.is_empty() {
        return Ok(None);
    }
    let err = |e: datafusion::arrow::error::ArrowError| Error::arrow("building a delta", e);
    let col = |name: &str| -> Result<&ArrayRef> {
        staged
            .column_by_name(name)
            .ok_or_else(|| Error::Internal(format!("staged change set has no column {name}")))
    };
    let indices = UInt32Array::from_iter_values(recorded.iter().map(|(i, _)| *i as u32));
    let prev_ids = string_column(staged, CONTACT_ID)?;
    let mut ids = Vec::with_capacity(recorded.len());
    let mut statuses = Vec::with_capacity(recorded.len());
    let mut ops = Vec::with_capacity(recorded.len());
    use DeltaOp::{Delete, Upsert};
    use SnapshotStatus::{Delivered, NotFound, Rejected};
    for (i, r) in &recorded {
        let prev = prev_ids
            .is_valid(*i)
            .then(|| prev_ids.value(*i).to_string());
        let (id, status, op) = match r {
            Recording::Created(id) => (id.map(str::to_string), Delivered, Upsert),
            Recording::Delivered(id) => (id.map(str::to_string).or(prev), Delivered, Upsert),
            Recording::NotFound => (None, NotFound, Upsert),
            Recording::Rejected => (prev, Rejected, Upsert),
            Recording::Deleted => (prev, Delivered, Delete),
        };
        ids.push(id);
        statuses.push(Some(status.as_str()));
        ops.push(Some(op.as_str()));
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    let mut push = |name: &str, a: ArrayRef| {
        fields.push(Field::new(name, a.data_type().clone(), true));
        columns.push(a);
    };
    push(
        IDENTIFIER,
        take(col(IDENTIFIER)?.as_ref(), &indices, None).map_err(err)?,
    );
    push(CONTACT_ID, Arc::new(StringArray::from(ids)));
    push(STATUS, Arc::new(StringArray::from(statuses)));
    push(
        ROW_HASH,
        take(col(ROW_HASH)?.as_ref(), &indices, None).map_err(err)?,
    );
    for a in attributes {
        push(a, take(col(a)?.as_ref(), &indices, None).map_err(err)?);
    }
    push(OP, Arc::new(StringArray::from(ops)));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map(Some)
        .map_err(err)
}

/// A manifest naming nothing yet, for `fields`.
fn new_manifest(fields: &NewSnapshot) -> Manifest {
    Manifest {
        format_version: manifest::FORMAT_VERSION,
        hash_version: crate::functions::row_hash::HASH_VERSION,
        generation: 0,
        identifier_key: fields.identifier_key.clone(),
        attributes: fields.attributes.clone(),
        snapshot: Vec::new(),
        deltas: Vec::new(),
        snapshot_rows: 0,
        run_id: fields.run_id.clone(),
        committed_at: String::new(),
    }
}

/// The manifest a run names its deltas in: the last commit's, or an empty one for a first
/// run (deltas need a manifest to be named in).
pub fn run_manifest(prev: Option<Manifest>, fields: &NewSnapshot) -> Manifest {
    let mut m = prev.unwrap_or_else(|| new_manifest(fields));
    if m.attributes != fields.attributes {
        // Until the commit rehashes everything, stored hashes mix two mappings: make
        // readers compare values instead.
        m.hash_version = 0;
        for (k, v) in &fields.attributes {
            m.attributes.insert(k.clone(), v.clone());
        }
    }
    m
}

/// A run's delta rows between checkpoints, and the manifest that names each delta once it
/// is written.
pub struct Checkpoints<'a> {
    state: &'a State,
    run_id: &'a str,
    manifest: Manifest,
    pending: Vec<RecordBatch>,
    pending_rows: u64,
    last: Instant,
    every_rows: u64,
    every: Duration,
}

impl<'a> Checkpoints<'a> {
    /// Checkpoints every `every_rows` recorded rows or `every`, whichever comes first.
    pub fn new(
        state: &'a State,
        run_id: &'a str,
        manifest: Manifest,
        every_rows: u64,
        every: Duration,
    ) -> Checkpoints<'a> {
        Checkpoints {
            state,
            run_id,
            manifest,
            pending: Vec::new(),
            pending_rows: 0,
            last: Instant::now(),
            every_rows,
            every,
        }
    }

    /// Adds the delta rows of one answered chunk of `staged`.
    pub fn add<O: Recorded>(
        &mut self,
        staged: &RecordBatch,
        outcomes: &[(usize, O)],
        attributes: &[String],
    ) -> Result<()> {
        if let Some(delta) = delta_batch(staged, outcomes, attributes)? {
            self.pending_rows += delta.num_rows() as u64;
            self.pending.push(delta);
        }
        Ok(())
    }

    /// Writes the pending rows when a checkpoint is due.
    pub async fn checkpoint_if_due(&mut self) -> Result<()> {
        if self.pending_rows >= self.every_rows || self.last.elapsed() >= self.every {
            self.checkpoint().await?;
            self.last = Instant::now();
        }
        Ok(())
    }

    /// Appends the pending rows as one delta and names it in the manifest.
    pub async fn checkpoint(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batches = std::mem::take(&mut self.pending);
        let rows = self
            .state
            .append_delta(&mut self.manifest, batches, self.run_id)
            .await?;
        tracing::info!(rows, deltas = self.manifest.deltas.len(), "checkpoint");
        self.pending_rows = 0;
        Ok(())
    }

    /// The manifest naming every delta written.
    pub fn into_manifest(self) -> Manifest {
        self.manifest
    }
}

fn df_err(what: &'static str) -> impl Fn(datafusion::error::DataFusionError) -> Error {
    move |e| Error::from(StateError::files(what, e))
}

impl State {
    /// Appends a delta (snapshot columns plus `_op`), written from this process, and names
    /// it in the manifest. Once this returns, the rows are part of the state, even if the
    /// process dies right after.
    pub async fn append_delta(
        &self,
        m: &mut Manifest,
        batches: Vec<RecordBatch>,
        run_id: &str,
    ) -> Result<u64> {
        let Some(schema) = batches.first().map(|b| b.schema()) else {
            return Ok(0);
        };
        let rel = format!(
            "deltas/{:08}-{:06}-{run_id}.parquet",
            m.generation,
            m.deltas.len() + 1
        );
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        let rows = self.write_batches(&rel, schema, stream).await?;
        m.deltas.push(rel);
        self.put_manifest(m).await?;
        Ok(rows)
    }

    /// Commits a run: the state with its deltas applied becomes the next snapshot.
    pub async fn commit_run(
        &self,
        ctx: &SessionContext,
        m: &Manifest,
        settings: &Settings,
        fields: &NewSnapshot,
    ) -> Result<Manifest> {
        let compacted = self.compact(ctx, m, settings).await?;
        let prev = if m.generation == 0 && m.snapshot.is_empty() {
            None
        } else {
            Some(m)
        };
        self.commit(prev, vec![compacted], fields).await
    }

    /// The state with its deltas applied, keeping only the current mapping's attributes and
    /// rehashing every row from its stored values, so the next diff can trust the hashes.
    async fn compact(&self, ctx: &SessionContext, m: &Manifest, s: &Settings) -> Result<DataFrame> {
        let loaded = self.load(ctx, m).await?;
        let schema = loaded.schema().as_arrow().clone();
        let src = temp_view(ctx, "commit", loaded).map_err(df_err("compacting the state"))?;
        let present: Vec<&str> = s
            .attributes
            .iter()
            .map(|a| a.attribute.as_str())
            .filter(|a| schema.field_with_name(a).is_ok())
            .collect();
        let hash = crate::functions::row_hash::sql_call(present.iter().map(|a| (*a, quote(a))));
        let mut cols = vec![
            quote(IDENTIFIER),
            quote(CONTACT_ID),
            quote(STATUS),
            format!("{hash} AS {}", quote(ROW_HASH)),
        ];
        cols.extend(present.iter().map(|a| quote(a)));
        ctx.sql(&format!("SELECT {} FROM {src}", cols.join(", ")))
            .await
            .map_err(df_err("compacting the state"))
    }

    /// Commits a baseline: the change set's current rows (`buckets`, one frame per diff
    /// bucket) become the snapshot, delivered, with the contactIds already known.
    pub async fn commit_baseline(
        &self,
        ctx: &SessionContext,
        prev: Option<&Manifest>,
        buckets: &[DataFrame],
        settings: &Settings,
        fields: &NewSnapshot,
    ) -> Result<Manifest> {
        let mut cols = vec![
            quote(IDENTIFIER),
            quote(CONTACT_ID),
            format!("'{}' AS {}", SnapshotStatus::Delivered, quote(STATUS)),
            quote(ROW_HASH),
        ];
        cols.extend(settings.attributes.iter().map(|m| quote(&m.attribute)));
        let mut rows = Vec::new();
        for df in buckets {
            let name =
                temp_view(ctx, "baseline", df.clone()).map_err(|e| Error::engine("baseline", e))?;
            let df = ctx
                .sql(&format!(
                    "SELECT {} FROM {name} WHERE {KIND} IN ('{}', '{}', '{}')",
                    cols.join(", "),
                    ChangeKind::New,
                    ChangeKind::Changed,
                    ChangeKind::Unchanged,
                ))
                .await
                .map_err(|e| Error::engine("baseline", e))?;
            rows.push(df);
        }
        self.commit(prev, rows, fields).await
    }

    /// Writes `frames` (snapshot columns; one per diff bucket, or one) as the new snapshot
    /// and then the manifest naming it. Until the manifest is replaced, readers see the
    /// previous state whole.
    async fn commit(
        &self,
        prev: Option<&Manifest>,
        mut frames: Vec<DataFrame>,
        fields: &NewSnapshot,
    ) -> Result<Manifest> {
        let generation = prev.map_or(1, |m| m.generation + 1);
        let rel = format!("snapshots/{generation:08}-{}.parquet", fields.run_id);
        let rows = match frames.len() {
            1 => self.write(frames.remove(0), &rel).await?,
            _ => self.write_in_turn(frames, &rel).await?,
        };
        let m = Manifest {
            generation,
            snapshot: vec![rel],
            snapshot_rows: rows,
            committed_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ..new_manifest(fields)
        };
        self.put_manifest(&m).await?;
        self.collect_garbage(&m).await;
        Ok(m)
    }

    /// Forgets the snapshot: the next run is a full sync. Returns whether there was one.
    pub async fn reset(&self) -> Result<bool> {
        let existed = self.manifest().await?.is_some();
        match self.store.delete(&self.path("manifest.json")).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(storage("removing manifest.json", e)),
        }
        for dir in ["snapshots", "deltas", "staged"] {
            self.remove_unlisted(dir, &[]).await;
        }
        Ok(existed)
    }

    /// Removes data files the manifest no longer names (best effort: leftovers are
    /// harmless, since readers only follow the manifest).
    async fn collect_garbage(&self, m: &Manifest) {
        let keep: Vec<String> = m.snapshot.iter().chain(&m.deltas).cloned().collect();
        // Staged change sets of runs that died are useless once a commit happened.
        for dir in ["snapshots", "deltas", "staged"] {
            self.remove_unlisted(dir, &keep).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{AsArray, BinaryArray};

    use super::*;

    /// A test outcome: the recording itself, or `None` for a row left unconfirmed.
    struct Answer(Option<Recording<'static>>);

    impl Recorded for Answer {
        fn recording(&self) -> Option<Recording<'_>> {
            self.0
        }
    }

    fn fields(attributes: &[(&str, &str)]) -> NewSnapshot {
        NewSnapshot {
            run_id: "run-1".into(),
            identifier_key: "email".into(),
            attributes: attributes
                .iter()
                .map(|(a, t)| (a.to_string(), t.to_string()))
                .collect(),
        }
    }

    fn strings(b: &RecordBatch, name: &str) -> Vec<Option<String>> {
        let c = b.column_by_name(name).unwrap().as_string::<i32>();
        (0..c.len())
            .map(|i| c.is_valid(i).then(|| c.value(i).to_string()))
            .collect()
    }

    #[test]
    fn a_first_run_names_its_deltas_in_an_empty_manifest() {
        let m = run_manifest(None, &fields(&[("a", "text")]));
        assert_eq!(m.generation, 0);
        assert!(m.snapshot.is_empty() && m.deltas.is_empty());
        assert_eq!(m.format_version, manifest::FORMAT_VERSION);
        assert_eq!(m.hash_version, crate::functions::row_hash::HASH_VERSION);
        assert_eq!(m.identifier_key, "email");
        assert_eq!(m.run_id, "run-1");
        assert_eq!(m.attributes, BTreeMap::from([("a".into(), "text".into())]));
    }

    #[test]
    fn a_new_mapping_widens_the_manifest_and_makes_readers_compare_values() {
        let prev = Manifest {
            generation: 3,
            snapshot: vec!["snapshots/00000003-r.parquet".into()],
            ..run_manifest(None, &fields(&[("a", "text")]))
        };
        let same = run_manifest(Some(prev.clone()), &fields(&[("a", "text")]));
        assert_eq!(same, prev);
        let m = run_manifest(Some(prev), &fields(&[("b", "number")]));
        assert_eq!(m.generation, 3);
        assert_eq!(m.hash_version, 0);
        assert_eq!(
            m.attributes.keys().collect::<Vec<_>>(),
            vec!["a", "b"],
            "stored hashes may cover either mapping"
        );
    }

    #[test]
    fn delta_rows_record_what_voyado_confirmed() {
        let ids = ["c@x", "u@x", "k@x", "n@x", "r@x", "d@x", "f@x"];
        let staged = RecordBatch::try_from_iter([
            (
                IDENTIFIER,
                Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
            ),
            (
                CONTACT_ID,
                Arc::new(StringArray::from(vec![
                    Some("old"),
                    Some("c-u"),
                    None,
                    Some("c-n"),
                    Some("c-r"),
                    Some("c-d"),
                    Some("c-f"),
                ])) as ArrayRef,
            ),
            (
                ROW_HASH,
                Arc::new(BinaryArray::from_iter_values(
                    ids.iter().map(|i| i.as_bytes()),
                )) as ArrayRef,
            ),
            (
                "a",
                Arc::new(StringArray::from(vec!["1", "2", "3", "4", "5", "6", "7"])) as ArrayRef,
            ),
            (
                "ignored",
                Arc::new(StringArray::from(vec!["x"; 7])) as ArrayRef,
            ),
        ])
        .unwrap();
        let outcomes = [
            (0, Answer(Some(Recording::Created(Some("c-new"))))),
            (1, Answer(Some(Recording::Delivered(None)))),
            (2, Answer(Some(Recording::Delivered(Some("c-k"))))),
            (3, Answer(Some(Recording::NotFound))),
            (4, Answer(Some(Recording::Rejected))),
            (5, Answer(Some(Recording::Deleted))),
            (6, Answer(None)),
        ];
        let delta = delta_batch(&staged, &outcomes, &["a".to_string()])
            .unwrap()
            .unwrap();
        let names: Vec<&str> = delta
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, [IDENTIFIER, CONTACT_ID, STATUS, ROW_HASH, "a", OP]);
        let s = |v: &[Option<&str>]| v.iter().map(|x| x.map(String::from)).collect::<Vec<_>>();
        // The failed row is left out: it is sent again next run.
        assert_eq!(
            strings(&delta, IDENTIFIER),
            s(&[
                Some("c@x"),
                Some("u@x"),
                Some("k@x"),
                Some("n@x"),
                Some("r@x"),
                Some("d@x")
            ])
        );
        assert_eq!(
            strings(&delta, CONTACT_ID),
            s(&[
                Some("c-new"),
                Some("c-u"),
                Some("c-k"),
                None,
                Some("c-r"),
                Some("c-d")
            ])
        );
        assert_eq!(
            strings(&delta, STATUS),
            s(&[
                Some("delivered"),
                Some("delivered"),
                Some("delivered"),
                Some("not_found"),
                Some("rejected"),
                Some("delivered")
            ])
        );
        assert_eq!(
            strings(&delta, OP),
            s(&[
                Some("upsert"),
                Some("upsert"),
                Some("upsert"),
                Some("upsert"),
                Some("upsert"),
                Some("delete")
            ])
        );
        assert_eq!(
            strings(&delta, "a"),
            s(&[
                Some("1"),
                Some("2"),
                Some("3"),
                Some("4"),
                Some("5"),
                Some("6")
            ])
        );
        let hashes = delta.column_by_name(ROW_HASH).unwrap().as_binary::<i32>();
        assert_eq!(hashes.value(3), b"n@x");
        assert!(
            delta_batch(&staged, &[(6, Answer(None))], &[])
                .unwrap()
                .is_none()
        );
    }
}
