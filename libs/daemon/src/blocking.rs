/// Runs blocking store work (LMDB, file IO) on tokio's blocking pool, off
/// the async threads; a panic in it becomes an Internal error.
pub async fn blocking<T, F>(work: F) -> berth_errdefs::Result<T>
where
    F: FnOnce() -> berth_errdefs::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| berth_errdefs::Error::internal(format!("blocking task failed: {e}")))?
}
