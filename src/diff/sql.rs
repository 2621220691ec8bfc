//! The SQL text of the diff: the compact state view, the identity rules and the
//! comparison, for the SQL form of the classification (Ballista, or a bucket too large to
//! hold) and for routing rows to bucket files.

use super::row_hash;
use crate::columns::{ChangeKind, KIND, KNOWN_CONTACT_ID, PREV_STATUS, RAW_IDENTIFIER, REASON};
use crate::config::Settings;
use crate::identity;
use crate::state::{self, quote};

/// The compact view of the state registered as `__vs_state`, its row hash given by
/// `snap_hash` (the stored column, or a hash recomputed from the stored values).
pub(super) fn compact(snap_hash: &str) -> String {
    format!(
        "SELECT {id} AS __s_id, {snap_hash} AS __s_hash, {cid} AS __s_contact_id, {st} AS __s_status FROM __vs_state",
        id = quote(state::IDENTIFIER),
        cid = quote(state::CONTACT_ID),
        st = quote(state::STATUS),
    )
}

/// The SQL of the identity rules and the comparison, over tables named by the caller (the
/// whole model and state, or one bucket's files).
pub(super) struct Rules {
    key: &'static str,
    raw: String,
    norm: String,
    known: String,
    hash: String,
    values: String,
    attr_cols: Vec<String>,
    shard_filter: String,
}

impl Rules {
    pub(super) fn new(settings: &Settings) -> Self {
        let key = settings.key.as_str();
        let id = quote(&settings.identifier_column);
        let raw = format!("CAST({id} AS VARCHAR)");
        let norm = format!("{}({raw}, '{key}')", identity::udf::NORMALIZE);
        // A shard keeps the rows whose normalised identifier hashes to it; rows without one
        // (invalid) go by their raw value, so every row lands in exactly one shard.
        let shard_filter = match settings.shard {
            Some(s) => format!(
                " WHERE {}(COALESCE({norm}, {raw}, ''), {}) = {}",
                identity::udf::SHARD,
                s.count,
                s.index
            ),
            None => String::new(),
        };
        Rules {
            key,
            hash: row_hash::sql_call(
                settings
                    .attributes
                    .iter()
                    .map(|m| (m.attribute.as_str(), quote(&m.column))),
            ),
            values: settings
                .attributes
                .iter()
                .map(|m| format!(", {} AS {}", quote(&m.column), quote(&m.attribute)))
                .collect(),
            attr_cols: settings
                .attributes
                .iter()
                .map(|m| quote(&m.attribute))
                .collect(),
            known: match &settings.contact_id_column {
                Some(c) => format!("NULLIF(trim(CAST({} AS VARCHAR)), '')", quote(c)),
                None => "CAST(NULL AS VARCHAR)".to_string(),
            },
            raw,
            norm,
            shard_filter,
        }
    }

    /// The model's value columns the SQL comparison carries through (`wide`), else none.
    pub(super) fn compared_values(&self, wide: bool) -> String {
        if wide {
            self.attr_cols
                .iter()
                .map(|c| format!(", m.{c}"))
                .collect::<String>()
        } else {
            String::new()
        }
    }

    /// The identifier a row's bucket is chosen by: normalised, or raw for invalid rows.
    pub(super) fn routing_id(&self) -> String {
        format!(
            "COALESCE({}, {RAW_IDENTIFIER}, '')",
            quote(state::IDENTIFIER)
        )
    }

    /// The model's rows with their identifiers and row hash (computed here, before the
    /// duplicate check, so a plan that needs only counts moves narrow rows), plus `extra`
    /// columns computed from those (a routing column).
    pub(super) fn projection(&self, src: &str, values: bool, extra: &str) -> String {
        let values = if values { self.values.as_str() } else { "" };
        let inner = format!(
            "SELECT {raw} AS {RAW_IDENTIFIER}, {norm} AS {ident}, {known} AS {KNOWN_CONTACT_ID}, \
               {hash} AS {row_hash}{values} FROM {src}{filter}",
            raw = self.raw,
            norm = self.norm,
            known = self.known,
            hash = self.hash,
            ident = state::IDENTIFIER,
            row_hash = state::ROW_HASH,
            filter = self.shard_filter,
        );
        if extra.is_empty() {
            inner
        } else {
            format!("SELECT *{extra} FROM ({inner})")
        }
    }

    /// The query routing the model's rows of `src` to bucket files: the projection plus
    /// `extra` (the routing column). Rows routed to count only (not `wide`) leave out what a
    /// count does not read: the known contactId, the raw identifier where it equals the
    /// normalised one (most rows; see `strategy::narrow`), and all of the row hash but the prefix
    /// that is compared: half of the files' bytes.
    pub(super) fn routed(&self, src: &str, wide: bool, extra: &str) -> String {
        let inner = self.projection(src, wide, "");
        if wide {
            return format!("SELECT *{extra} FROM ({inner})");
        }
        let (ident, rh) = (quote(state::IDENTIFIER), quote(state::ROW_HASH));
        format!(
            "SELECT NULLIF({RAW_IDENTIFIER}, {ident}) AS {RAW_IDENTIFIER}, {ident}, \
               {prefix}({rh}) AS {rh}{extra} FROM ({inner})",
            prefix = row_hash::HASH_PREFIX,
        )
    }

    /// Every row of `model` with `__present` and its `_reason` when invalid (identifier
    /// rules, or an identifier shared by several rows). Duplicates come from a grouped count
    /// over the identifier column alone, joined back to every row (the small side is the
    /// one built, so rows stream through): measured 1.9 s -> 1.1 s and 740 -> 460 MB for a
    /// 1 M-row plan against `count(*) OVER (PARTITION BY ...)`, whose window operator sorts
    /// and evaluates a million single-row partitions.
    pub(super) fn checked(&self, model: &str) -> String {
        format!(
            "SELECT m.*, TRUE AS __present, \
               COALESCE({problem}(m.{ident}, '{key}'), \
                 CASE WHEN d.__dup_id IS NOT NULL THEN '{dup}' END) AS {REASON} \
             FROM (SELECT {ident} AS __dup_id FROM {model} GROUP BY {ident} HAVING count(*) > 1) d \
             RIGHT JOIN {model} m ON d.__dup_id = m.{ident}",
            problem = identity::udf::PROBLEM,
            ident = state::IDENTIFIER,
            dup = identity::REASON_DUPLICATE,
            key = self.key,
        )
    }

    /// Classifies each row of the full outer join of the compact state with the checked
    /// model rows. Comparisons are parenthesised: DataFusion 55 misparses chained
    /// IS DISTINCT FROM.
    pub(super) fn compare(&self, snap: &str, valid: &str, values: &str) -> String {
        format!(
            "SELECT \
               CASE WHEN (m.__present IS NULL) THEN '{deleted}' \
                    WHEN (m.{REASON} IS NOT NULL) THEN '{invalid}' \
                    WHEN (s.__s_id IS NULL) THEN '{new}' \
                    WHEN (m.{rh} = s.__s_hash) THEN '{unchanged}' \
                    ELSE '{changed}' END AS {KIND}, \
               COALESCE(m.{ident}, s.__s_id) AS {ident}, \
               m.{RAW_IDENTIFIER}, m.{REASON}, m.{KNOWN_CONTACT_ID}, \
               s.__s_contact_id AS {cid}, s.__s_status AS {PREV_STATUS}, \
               m.{rh}{values} \
             FROM ({snap}) s \
             FULL OUTER JOIN ({valid}) m \
               ON (s.__s_id = m.{ident})",
            rh = quote(state::ROW_HASH),
            ident = quote(state::IDENTIFIER),
            cid = quote(state::CONTACT_ID),
            deleted = ChangeKind::Deleted,
            invalid = ChangeKind::Invalid,
            new = ChangeKind::New,
            unchanged = ChangeKind::Unchanged,
            changed = ChangeKind::Changed,
        )
    }
}
