//! Who may make which request: the `[access]` section of the configuration applied to the
//! client's credentials (SO_PEERCRED).
//!
//! Managing models — `load` (and `--replace`), `unload`, `resplit` (`llmctl reload`), and
//! `inspect` and `plan`, which open a path with the daemon's own rights — is for **managers**:
//! root, the daemon's own user, the users in `manage_users` and the members (primary or
//! supplementary group, from `getgrouplist`) of `manage_groups`. Every other request is open
//! to every user who can open the socket. Without an `[access]` section every socket user is a
//! manager, as before the section existed; the daemon logs that at start.

use llmd_shared::{ErrorCode, ErrorReply, Request};

use super::peer::Peer;
use crate::config::{AccessConfig, Principal};
use crate::users;

/// What a request does that only managers may, e.g. "load models"; `None` for requests open to
/// every socket user.
pub fn managed_action(request: &Request) -> Option<&'static str> {
    match request {
        Request::Load(r) if r.replace => Some("replace models"),
        Request::Load(_) => Some("load models"),
        Request::Unload(_) => Some("unload models"),
        Request::Resplit(_) => Some("re-split or reload models"),
        Request::Inspect(_) => Some("inspect model files"),
        Request::Plan(_) => Some("plan model files"),
        Request::Status(_)
        | Request::Version(_)
        | Request::List(_)
        | Request::Generate(_)
        | Request::Tokenize(_)
        | Request::Bench(_)
        | Request::Doctor(_)
        | Request::Metrics(_) => None,
    }
}

/// Refuses a managing request (`action`, from [`managed_action`]) with `forbidden` unless
/// `peer` is a manager under `access` (`None`: no `[access]` section, everyone is). Looks users
/// and groups up, which may block: call it on a blocking thread.
pub fn authorize(
    access: Option<&AccessConfig>,
    peer: &Peer,
    action: &str,
) -> Result<(), ErrorReply> {
    let Some(access) = access else {
        return Ok(());
    };
    if peer.uid == 0 || peer.uid == users::daemon_uid() {
        return Ok(());
    }
    match is_manager(access, peer) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ErrorReply::new(
            ErrorCode::Forbidden,
            format!(
                "user {} may not {action}: the daemon's [access] section lets only root, the \
                 daemon's own user and its manage_users / manage_groups load, replace, unload, \
                 re-split, inspect and plan; generate, chat, tokenize, bench, status, list, \
                 doctor and metrics are open to every user of the socket",
                peer.uid
            ),
        )),
        Err(why) => {
            tracing::warn!(uid = peer.uid, "cannot check the user's groups: {why}");
            Err(ErrorReply::new(
                ErrorCode::Forbidden,
                format!(
                    "user {} may not {action}: its groups could not be looked up ({why})",
                    peer.uid
                ),
            ))
        }
    }
}

/// Whether `peer` is in `manage_users`, or its primary group or one of its user's groups is in
/// `manage_groups`.
fn is_manager(access: &AccessConfig, peer: &Peer) -> Result<bool, String> {
    for user in &access.manage_users {
        match user {
            Principal::Id(uid) if *uid == peer.uid => return Ok(true),
            Principal::Id(_) => {}
            Principal::Name(name) => match users::lookup_user(name) {
                Ok(uid) if uid == peer.uid => return Ok(true),
                Ok(_) => {}
                // A user deleted since the config was read matches nobody.
                Err(e) => tracing::debug!("access: user {name}: {e}"),
            },
        }
    }
    if access.manage_groups.is_empty() {
        return Ok(false);
    }
    let mut groups = vec![peer.gid];
    if let Some((name, primary)) = users::user_of(peer.uid).map_err(|e| e.to_string())? {
        groups.extend(users::groups_of(&name, primary).map_err(|e| e.to_string())?);
    }
    for group in &access.manage_groups {
        let gid = match group {
            Principal::Id(gid) => *gid,
            Principal::Name(name) => match users::lookup_group(name) {
                Ok(gid) => gid,
                Err(e) => {
                    tracing::debug!("access: group {name}: {e}");
                    continue;
                }
            },
        };
        if groups.contains(&gid) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Logs, once at start, who may manage models.
pub fn log_policy(access: Option<&AccessConfig>) {
    match access {
        None => tracing::warn!(
            "no [access] section in the configuration: every user who can open the socket may \
             load, replace, unload and re-split models and make the daemon read files"
        ),
        Some(a) => {
            let list = |p: &[Principal]| {
                if p.is_empty() {
                    "none".to_owned()
                } else {
                    p.iter()
                        .map(Principal::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            tracing::info!(
                "model management limited to root, the daemon's user, users [{}] and groups [{}]",
                list(&a.manage_users),
                list(&a.manage_groups)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmd_shared::{GenerateRequest, LoadRequest, Prompt, Sampling, UnloadRequest};

    fn peer(uid: u32, gid: u32) -> Peer {
        Peer { uid, gid, pid: 1 }
    }

    fn unload() -> Request {
        Request::Unload(UnloadRequest { name: "m".into() })
    }

    fn generate() -> Request {
        Request::Generate(GenerateRequest {
            model: "m".into(),
            prompt: Prompt::Raw("hi".into()),
            max_tokens: 1,
            sampling: Sampling::default(),
            stop: Vec::new(),
        })
    }

    /// A uid and gid no real account has.
    const STRANGER: u32 = 4_000_000_123;

    /// `authorize` as `dispatch` calls it: only for managing requests.
    fn check(
        access: Option<&AccessConfig>,
        peer: &Peer,
        request: &Request,
    ) -> Result<(), ErrorReply> {
        match managed_action(request) {
            Some(action) => authorize(access, peer, action),
            None => Ok(()),
        }
    }

    #[test]
    fn without_an_access_section_everyone_manages() {
        assert!(check(None, &peer(STRANGER, STRANGER), &unload()).is_ok());
    }

    #[test]
    fn managers_by_uid_and_group_others_only_use() {
        let access = AccessConfig {
            manage_users: vec![Principal::Id(STRANGER + 1)],
            manage_groups: vec![Principal::Id(STRANGER + 2)],
        };
        let a = Some(&access);
        // Not a manager: may generate, may not unload or replace.
        assert!(check(a, &peer(STRANGER, STRANGER), &generate()).is_ok());
        let err = check(a, &peer(STRANGER, STRANGER), &unload()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Forbidden);
        assert!(
            err.message.contains("may not unload models"),
            "{}",
            err.message
        );
        let replace = Request::Load(LoadRequest {
            path: "/m.gguf".into(),
            replace: true,
            ..LoadRequest::default()
        });
        let err = check(a, &peer(STRANGER, STRANGER), &replace).unwrap_err();
        assert!(err.message.contains("replace models"), "{}", err.message);
        // A listed user, a member of a listed group (primary gid from the credentials).
        assert!(check(a, &peer(STRANGER + 1, STRANGER), &unload()).is_ok());
        assert!(check(a, &peer(STRANGER, STRANGER + 2), &unload()).is_ok());
        // Root and the daemon's own user always.
        assert!(check(a, &peer(0, STRANGER), &unload()).is_ok());
        assert!(check(a, &peer(users::daemon_uid(), STRANGER), &unload()).is_ok());
    }

    /// Group membership also comes from the user's supplementary groups (`getgrouplist`), not
    /// only from the gid in the credentials. Uses the `nobody` account where the system has one.
    #[test]
    fn supplementary_groups_count() {
        let Ok(Some((name, gid))) = users::user_of(65_534) else {
            println!("SKIPPED: no account with uid 65534");
            return;
        };
        let groups = users::groups_of(&name, gid).unwrap();
        let member = AccessConfig {
            manage_users: Vec::new(),
            manage_groups: vec![Principal::Id(groups[0])],
        };
        // The credentials carry an unrelated gid: membership comes from getgrouplist.
        assert!(check(Some(&member), &peer(65_534, STRANGER), &unload()).is_ok());
        let other = AccessConfig {
            manage_users: Vec::new(),
            manage_groups: vec![Principal::Id(STRANGER + 9)],
        };
        assert!(check(Some(&other), &peer(65_534, STRANGER), &unload()).is_err());
    }
}
