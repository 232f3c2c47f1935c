//! What the cluster's tables in the CQL database (the roster, the shard leases) share:
//! creating them and preparing their statements. Errors come back as text, for each
//! caller to wrap in its own error type.

use scylla::client::session::Session;
use scylla::statement::prepared::PreparedStatement;

/// Runs each `CREATE TABLE IF NOT EXISTS …` statement in order. The caller waits for
/// schema agreement once it has changed everything it means to.
pub(super) async fn create_tables(session: &Session, ddl: &[String]) -> Result<(), String> {
    for statement in ddl {
        session
            .query_unpaged(statement.as_str(), ())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Prepares `cql`; the error names the statement.
pub(super) async fn prepare(session: &Session, cql: String) -> Result<PreparedStatement, String> {
    session
        .prepare(cql.as_str())
        .await
        .map_err(|e| format!("preparing {cql:?}: {e}"))
}
