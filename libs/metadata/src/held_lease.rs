//! A lease a client works under: created before the work, renewed while
//! it runs, deleted after.
//!
//! containerd's clients give a pull's lease a day to live, so a client
//! that dies mid-pull keeps everything it fetched for a day. berth's
//! clients give it [`CLIENT_LEASE_TTL`] and move the expiry forward while
//! the work goes on: a dead client's lease expires minutes later and the
//! next collection takes what it held, while a pull of any length keeps
//! its pieces.

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_errdefs::{ErrorKind, Result};

use crate::{format_rfc3339, Lease, LeaseManager, LABEL_GC_EXPIRE};

/// How long a client's lease outlives its last renewal.
pub const CLIENT_LEASE_TTL: Duration = Duration::from_secs(5 * 60);

/// How many renewals fit in one lifetime: one may fail (metad
/// restarting) without the lease expiring.
const RENEWALS_PER_TTL: u32 = 5;

/// After a failed renewal, the next try comes this soon (or at the usual
/// interval, if that is sooner).
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// How long deleting the lease is retried while metad is unreachable
/// (restarting under systemd takes a fraction of a second).
const DELETE_RETRY_FOR: Duration = Duration::from_secs(3);

/// Runs `work` under a new lease in `namespace` (it gets the lease's id)
/// that expires `ttl` after its last renewal; renews it every `ttl / 5`
/// while `work` runs, then deletes it. Returns what `work` returned and
/// how deleting the lease went: if that fails, the lease expires on its
/// own within `ttl`.
///
/// Fails before `work` runs only if the lease cannot be made.
pub async fn with_held_lease<T, F, Fut>(
    leases: &dyn LeaseManager,
    namespace: &str,
    ttl: Duration,
    work: F,
) -> Result<(T, Result<()>)>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = T>,
{
    with_lease_taken_during(leases, namespace, ttl, async { Ok(()) }, |id, ()| work(id)).await
}

/// As [`with_held_lease`], with the lease made while `first` runs (work
/// that needs no lease, such as reading what the leased work will use):
/// `work` gets the lease's id and what `first` gave. If `first` fails,
/// the lease is deleted and its error returned; `work` does not run.
pub async fn with_lease_taken_during<P, T, F, Fut>(
    leases: &dyn LeaseManager,
    namespace: &str,
    ttl: Duration,
    first: impl Future<Output = Result<P>>,
    work: F,
) -> Result<(T, Result<()>)>
where
    F: FnOnce(String, P) -> Fut,
    Fut: Future<Output = T>,
{
    // The lease is renewed from when it exists until `first` is done too
    // (`first` may take long: an unpack), then while `work` runs.
    let first_done = tokio::sync::Notify::new();
    let taking = async {
        let lease = leases.create(namespace, "", expiry_labels(ttl)).await?;
        tokio::select! {
            () = keep_renewed(leases, namespace, &lease.id, ttl) => {}
            // A permit stored before this waits counts.
            () = first_done.notified() => {}
        }
        Ok::<_, berth_errdefs::Error>(lease)
    };
    let first = async {
        let output = first.await;
        first_done.notify_one();
        output
    };
    let (lease, first) = tokio::join!(taking, first);
    let lease = lease.map_err(|e| e.context("taking a lease"))?;
    let first = match first {
        Ok(first) => first,
        Err(e) => {
            let _ = delete_retrying(leases, namespace, &lease.id).await;
            return Err(e);
        }
    };
    let output = {
        let work = work(lease.id.clone(), first);
        let renew = keep_renewed(leases, namespace, &lease.id, ttl);
        tokio::pin!(work);
        tokio::pin!(renew);
        tokio::select! {
            biased;
            output = &mut work => output,
            () = &mut renew => work.await,
        }
    };
    let deleted = delete_retrying(leases, namespace, &lease.id).await;
    Ok((output, deleted))
}

fn expiry_labels(ttl: Duration) -> crate::Labels {
    [(
        LABEL_GC_EXPIRE.to_string(),
        format_rfc3339(SystemTime::now() + ttl),
    )]
    .into()
}

/// Moves the lease's expiry forward until it is gone (someone deleted
/// it: there is nothing left to renew); never returns otherwise.
async fn keep_renewed(leases: &dyn LeaseManager, namespace: &str, id: &str, ttl: Duration) {
    let interval = ttl / RENEWALS_PER_TTL;
    let path = [format!("labels.{LABEL_GC_EXPIRE}")];
    let mut wait = interval;
    loop {
        tokio::time::sleep(wait).await;
        let renewal = Lease {
            id: id.to_string(),
            created_at: UNIX_EPOCH,
            labels: expiry_labels(ttl),
        };
        wait = match leases.update(namespace, renewal, &path).await {
            Ok(_) => interval,
            Err(e) if e.kind() == ErrorKind::NotFound => return,
            Err(_) => RETRY_AFTER.min(interval),
        };
    }
}

/// Deletes the lease; while metad is unreachable, tries again for a few
/// seconds. A NotFound after a failed try means an earlier one got there.
async fn delete_retrying(leases: &dyn LeaseManager, namespace: &str, id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + DELETE_RETRY_FOR;
    let mut retried = false;
    loop {
        match leases.delete(namespace, id, false).await {
            Ok(()) => return Ok(()),
            Err(e) if retried && e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e)
                if e.kind() == ErrorKind::Unavailable && tokio::time::Instant::now() < deadline =>
            {
                retried = true;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.context(format!("dropping lease {id}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use berth_errdefs::{Error, ErrorKind};

    use super::*;
    use crate::{parse_rfc3339, Labels, Resource};

    /// Leases in memory, with the failures a restarting metad gives.
    #[derive(Default)]
    struct Fake {
        leases: Mutex<Vec<Lease>>,
        /// Calls that fail with Unavailable before the next succeeds.
        unavailable: Mutex<u32>,
        updates: Mutex<u32>,
        /// When (on tokio's clock) the lease was made or last renewed.
        renewed_at: Mutex<Vec<tokio::time::Instant>>,
    }

    impl Fake {
        fn fail_next(&self) -> Result<()> {
            let mut n = self.unavailable.lock().unwrap();
            if *n > 0 {
                *n -= 1;
                return Err(Error::unavailable("connection closed"));
            }
            Ok(())
        }

        fn expiry(&self) -> Option<SystemTime> {
            let leases = self.leases.lock().unwrap();
            leases
                .first()
                .and_then(|l| parse_rfc3339(&l.labels[LABEL_GC_EXPIRE]).ok())
        }

        /// The longest the lease went without a renewal, up to now.
        fn longest_gap(&self) -> Duration {
            let mut times = self.renewed_at.lock().unwrap().clone();
            times.push(tokio::time::Instant::now());
            times.windows(2).map(|w| w[1] - w[0]).max().unwrap()
        }
    }

    #[async_trait]
    impl LeaseManager for Fake {
        async fn create(&self, _: &str, _: &str, labels: Labels) -> Result<Lease> {
            self.fail_next()?;
            let lease = Lease {
                id: "held".into(),
                created_at: SystemTime::now(),
                labels,
            };
            self.leases.lock().unwrap().push(lease.clone());
            self.renewed_at
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            Ok(lease)
        }
        async fn update(&self, _: &str, lease: Lease, paths: &[String]) -> Result<Lease> {
            self.fail_next()?;
            assert_eq!(paths, [format!("labels.{LABEL_GC_EXPIRE}")]);
            *self.updates.lock().unwrap() += 1;
            let mut leases = self.leases.lock().unwrap();
            let held = leases
                .iter_mut()
                .find(|l| l.id == lease.id)
                .ok_or_else(|| Error::not_found("gone"))?;
            held.labels.insert(
                LABEL_GC_EXPIRE.into(),
                lease.labels[LABEL_GC_EXPIRE].clone(),
            );
            self.renewed_at
                .lock()
                .unwrap()
                .push(tokio::time::Instant::now());
            Ok(held.clone())
        }
        async fn delete(&self, _: &str, id: &str, _: bool) -> Result<()> {
            self.fail_next()?;
            let mut leases = self.leases.lock().unwrap();
            let before = leases.len();
            leases.retain(|l| l.id != id);
            if leases.len() == before {
                return Err(Error::not_found("gone"));
            }
            Ok(())
        }
        async fn list(&self, _: &str, _: &[String]) -> Result<Vec<Lease>> {
            Ok(self.leases.lock().unwrap().clone())
        }
        async fn add_resource(&self, _: &str, _: &str, _: Resource) -> Result<()> {
            Ok(())
        }
        async fn delete_resource(&self, _: &str, _: &str, _: Resource) -> Result<()> {
            Ok(())
        }
        async fn list_resources(&self, _: &str, _: &str) -> Result<Vec<Resource>> {
            Ok(Vec::new())
        }
    }

    const TTL: Duration = Duration::from_secs(300);

    #[tokio::test(start_paused = true)]
    async fn a_long_work_keeps_its_lease_alive_and_drops_it_after() {
        let fake = Fake::default();
        let (output, deleted) = with_held_lease(&fake, "default", TTL, |id| {
            let fake = &fake;
            async move {
                assert_eq!(id, "held");
                // The expiry it was made with is the lifetime from now.
                let expiry = fake.expiry().unwrap();
                let lifetime = expiry.duration_since(SystemTime::now()).unwrap();
                assert!(lifetime > TTL - Duration::from_secs(5) && lifetime <= TTL);
                // Three lifetimes of work: without renewals the lease
                // would have expired twice over.
                tokio::time::sleep(TTL * 3).await;
                assert!(fake.longest_gap() <= TTL / 5, "{:?}", fake.longest_gap());
                "done"
            }
        })
        .await
        .unwrap();
        assert_eq!(output, "done");
        deleted.unwrap();
        assert!(fake.leases.lock().unwrap().is_empty());
        assert!(*fake.updates.lock().unwrap() >= 14);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_renewal_is_tried_again_soon() {
        let fake = Fake::default();
        let ((), deleted) = with_held_lease(&fake, "default", TTL, |_| async {
            tokio::time::sleep(TTL / 5 + Duration::from_millis(10)).await;
            // The first renewal happened; the next two calls fail.
            let renewed = *fake.updates.lock().unwrap();
            assert_eq!(renewed, 1);
            *fake.unavailable.lock().unwrap() = 2;
            tokio::time::sleep(TTL / 5 + RETRY_AFTER * 3).await;
            // Two failures a second apart, then a renewal: two seconds
            // late, far from the lease's end.
            assert_eq!(*fake.updates.lock().unwrap(), 2);
            let gap = fake.longest_gap();
            assert!(gap <= TTL / 5 + RETRY_AFTER * 2, "{gap:?}");
        })
        .await
        .unwrap();
        deleted.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_waits_out_a_restart_and_reports_a_lasting_failure() {
        let fake = Fake::default();
        let ((), deleted) = with_held_lease(&fake, "default", TTL, |_| async {
            *fake.unavailable.lock().unwrap() = 3;
        })
        .await
        .unwrap();
        deleted.unwrap();
        assert!(fake.leases.lock().unwrap().is_empty());

        let ((), deleted) = with_held_lease(&fake, "default", TTL, |_| async {
            *fake.unavailable.lock().unwrap() = 1000;
        })
        .await
        .unwrap();
        let err = deleted.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(err.to_string().contains("dropping lease held"), "{err}");
        assert_eq!(fake.leases.lock().unwrap().len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn no_lease_no_work() {
        let fake = Fake::default();
        *fake.unavailable.lock().unwrap() = 1;
        let mut ran = false;
        let err = with_held_lease(&fake, "default", TTL, |_| async { ran = true })
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unavailable);
        assert!(!ran);
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_part_hands_its_result_on_and_its_failure_drops_the_lease() {
        let fake = Fake::default();
        let ((seen, id), deleted) = with_lease_taken_during(
            &fake,
            "default",
            TTL,
            async { Ok(42) },
            |id, seen| async move { (seen, id) },
        )
        .await
        .unwrap();
        deleted.unwrap();
        assert_eq!(seen, 42, "the work gets what the first part gave");
        assert!(id.starts_with("held"), "{id}");
        assert!(fake.leases.lock().unwrap().is_empty());

        // A first part that outlasts the lease's lifetime: the lease is
        // renewed meanwhile, so the work still finds it.
        let (found, deleted) = with_lease_taken_during(
            &fake,
            "default",
            TTL,
            async {
                tokio::time::sleep(TTL * 3).await;
                Ok(())
            },
            |id, ()| {
                let fake = &fake;
                async move { fake.leases.lock().unwrap().iter().any(|l| l.id == id) }
            },
        )
        .await
        .unwrap();
        deleted.unwrap();
        assert!(found);
        assert!(
            *fake.updates.lock().unwrap() >= 3 * RENEWALS_PER_TTL - 1,
            "renewed {} times during the first part",
            fake.updates.lock().unwrap()
        );

        let mut ran = false;
        let err = with_lease_taken_during(
            &fake,
            "default",
            TTL,
            async { Err::<(), _>(Error::not_found("no such image")) },
            |_, ()| async { ran = true },
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(!ran);
        assert!(
            fake.leases.lock().unwrap().is_empty(),
            "the lease made beside a failed first part is deleted"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_deleted_by_someone_else_stops_the_renewals_not_the_work() {
        let fake = Fake::default();
        let (output, deleted) = with_held_lease(&fake, "default", TTL, |id| {
            let fake = &fake;
            async move {
                fake.leases.lock().unwrap().retain(|l| l.id != id);
                tokio::time::sleep(TTL * 2).await;
                7
            }
        })
        .await
        .unwrap();
        assert_eq!(output, 7);
        assert_eq!(*fake.updates.lock().unwrap(), 1);
        assert_eq!(deleted.unwrap_err().kind(), ErrorKind::NotFound);
    }
}
