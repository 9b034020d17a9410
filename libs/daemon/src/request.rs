use berth_errdefs::Error;
use berth_ids::{validate_id, validate_namespace, DEFAULT_NAMESPACE};

/// The validated namespace a request is for, from its ttrpc metadata
/// (`containerd-namespace`), `default` when absent.
pub fn request_namespace(ctx: &ttrpc::r#async::TtrpcContext) -> Result<String, Error> {
    let namespace = single_value(ctx, berth_api::NAMESPACE_KEY, "namespace")?
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
    validate_namespace(&namespace)?;
    Ok(namespace)
}

/// The validated lease a request works under, from its ttrpc metadata
/// (`containerd-lease`), if any.
pub fn request_lease(ctx: &ttrpc::r#async::TtrpcContext) -> Result<Option<String>, Error> {
    let lease = single_value(ctx, berth_api::LEASE_KEY, "lease")?;
    if let Some(id) = &lease {
        validate_id(id)?;
    }
    Ok(lease)
}

fn single_value(
    ctx: &ttrpc::r#async::TtrpcContext,
    key: &str,
    what: &str,
) -> Result<Option<String>, Error> {
    match ctx.metadata.get(key).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([one]) => Ok(Some(one.clone())),
        Some(_) => Err(Error::invalid_argument(format!(
            "more than one {what} in the request metadata"
        ))),
    }
}

/// A service method's result as ttrpc wants it: the error mapped to its
/// status code, and logged at debug level with the method's name.
pub fn reply<T>(method: &'static str, result: Result<T, Error>) -> ttrpc::Result<T> {
    crate::memory::release_soon();
    result.map_err(|e| {
        tracing::debug!(method, kind = %e.kind(), error = %e, "request failed");
        e.into_ttrpc()
    })
}
