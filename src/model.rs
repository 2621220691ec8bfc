//! The user's SQL model: planned on the registered sources, its output checked against the
//! mapping before any data moves.

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::execution::context::SQLOptions;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::config::Settings;
use crate::diff::row_hash;
use crate::error::{Error, Result, df_message};

/// Plans the model. Only queries are allowed: DDL, DML and statements (`SET`, ...) are
/// refused, so a model cannot write anywhere or change the session.
pub async fn plan(ctx: &SessionContext, settings: &Settings) -> Result<DataFrame> {
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(&settings.model_sql, options)
        .await
        .map_err(|e| Error::Input(df_message(&format!("model {}", settings.model_origin), &e)))
}

/// Checks the model's output schema against the configuration: the identifier and every
/// mapped column exist, and each has a type the pipeline can compare, hash and encode.
pub fn check_output(schema: &Schema, settings: &Settings) -> Vec<String> {
    let mut problems = Vec::new();
    let available = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match schema.field_with_name(&settings.identifier_column) {
        Err(_) => problems.push(format!(
            "[identifier] column: the model has no column {:?} (it has: {})",
            settings.identifier_column,
            available()
        )),
        Ok(f) => {
            let ok = matches!(
                f.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
                    | DataType::UInt64
            );
            if !ok {
                problems.push(format!(
                    "[identifier] column: {} has type {}; identifiers must be strings or integers",
                    f.name(),
                    f.data_type()
                ));
            }
        }
    }
    if let Some(c) = &settings.contact_id_column
        && schema.field_with_name(c).is_err()
    {
        problems.push(format!(
            "[identifier] contact_id_column: the model has no column {c:?} (it has: {})",
            available()
        ));
    }
    for m in &settings.attributes {
        let place = if m.custom {
            "[custom_attributes] columns"
        } else {
            "[fields]"
        };
        match schema.field_with_name(&m.column) {
            Err(_) => problems.push(format!(
                "{place}: the model has no column {:?} (it has: {})",
                m.column,
                available()
            )),
            Ok(f) if !row_hash::supported_type(f.data_type()) => problems.push(format!(
                "{place}: column {} has type {}, which cannot be sent to Voyado (use strings, integers, floats, decimals, booleans, dates or timestamps)",
                m.column,
                f.data_type()
            )),
            Ok(_) => {}
        }
    }
    problems
}
