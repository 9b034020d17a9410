use berth_errdefs::Error;
use berth_ids::{validate_namespace, DEFAULT_NAMESPACE};

/// The validated namespace a request is for, from its ttrpc metadata
/// (`containerd-namespace`), `default` when absent.
pub fn request_namespace(ctx: &ttrpc::r#async::TtrpcContext) -> Result<String, Error> {
    let namespace = match ctx.metadata.get(berth_api::NAMESPACE_KEY) {
        None => return Ok(DEFAULT_NAMESPACE.to_string()),
        Some(values) => match values.as_slice() {
            [] => return Ok(DEFAULT_NAMESPACE.to_string()),
            [one] => one.clone(),
            _ => {
                return Err(Error::invalid_argument(
                    "more than one namespace in the request metadata",
                ))
            }
        },
    };
    validate_namespace(&namespace)?;
    Ok(namespace)
}

/// A service method's result as ttrpc wants it: the error mapped to its
/// status code, and logged at debug level with the method's name.
pub fn reply<T>(method: &'static str, result: Result<T, Error>) -> ttrpc::Result<T> {
    result.map_err(|e| {
        tracing::debug!(method, kind = %e.kind(), error = %e, "request failed");
        e.into_ttrpc()
    })
}
