//! Reconciliation: makes the resident declared models match the configuration's `[[models]]`,
//! at start and after every reload (SIGHUP / `systemctl reload`), in the background, so the
//! daemon serves (and sends READY) at once.
//!
//! For each declared model, by comparing the declaration applied last with the new one
//! ([`plan`], a pure function):
//! - added (or a start model not resident, e.g. its load failed): loaded, in the file's order;
//! - removed: unloaded; running requests finish on it first (the registry's `Arc`);
//! - devices or split changed: re-split live (`LoadedModel::resplit`), running generations
//!   continuing with unchanged tokens;
//! - file, context, threads, cache types, GPU layers or chat template changed: loaded again
//!   beside the old copy and swapped in atomically, as `load --replace`;
//! - anything else (keep-alive, request defaults, the load policy of a resident model): left
//!   resident untouched.
//!
//! Models loaded by hand (`llmctl load`) are not declared and never touched; a declaration whose
//! name a hand-loaded model holds is reported failed instead of replacing it.

use std::path::PathBuf;
use std::sync::Arc;

use llmd_shared::{DeclaredState, ErrorReply, ResplitRequest};

use crate::config::{LoadPolicy, ModelDecl};
use crate::state::State;

/// What to do for one declared name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Load it (not resident, declared to load at start).
    Load(String),
    /// Load it again and swap it in (resident; its file or load settings changed).
    Replace(String),
    /// Move it live (resident; its devices or split changed).
    Resplit(String),
    /// Unload it (no longer declared).
    Unload(String),
    /// Nothing to do.
    Keep(String),
}

/// A declaration with its file resolved against `models_dir`.
pub type Resolved = (ModelDecl, PathBuf);

/// The actions that take the declarations `old` (as applied) to `new`, in `new`'s order after
/// the unloads (which free memory first). `resident(name)` says whether the declared model is
/// resident now.
pub fn plan(old: &[Resolved], new: &[Resolved], resident: &dyn Fn(&str) -> bool) -> Vec<Action> {
    let mut actions: Vec<Action> = old
        .iter()
        .filter(|(o, _)| !new.iter().any(|(n, _)| n.name == o.name))
        .filter(|(o, _)| resident(&o.name))
        .map(|(o, _)| Action::Unload(o.name.clone()))
        .collect();
    for (n, n_path) in new {
        let name = n.name.clone();
        let before = old.iter().find(|(o, _)| o.name == n.name);
        let action = match before {
            Some((o, o_path)) if resident(&name) => {
                if o_path != n_path || o.needs_reload(n, o_path, n_path) {
                    Action::Replace(name)
                } else if o.gpu_layers != n.gpu_layers {
                    // A re-split moves layers between the devices named; GPU layers change
                    // which devices there are, so the model is loaded again.
                    Action::Replace(name)
                } else if o.placement_differs(n) {
                    Action::Resplit(name)
                } else {
                    Action::Keep(name)
                }
            }
            _ if resident(&name) => Action::Keep(name),
            _ if n.load == LoadPolicy::Start => Action::Load(name),
            _ => Action::Keep(name),
        };
        actions.push(action);
    }
    actions
}

/// Reconciles with the configuration in force now, in the background.
pub fn spawn(state: &Arc<State>) {
    let state = Arc::clone(state);
    tokio::spawn(async move { run(&state).await });
}

/// Reconciles with the configuration in force (waiting for a reconciliation already running, so
/// the last configuration wins).
pub async fn run(state: &Arc<State>) {
    let _turn = state.declared.reconcile.lock().await;
    let config = state.config();
    let dir = config.config.models_dir();
    let new: Vec<Resolved> = config
        .config
        .models
        .iter()
        .map(|d| (d.clone(), d.resolved_path(dir)))
        .collect();
    let before = state.declared.snapshot();
    let old: Vec<Resolved> = before
        .iter()
        .map(|e| (e.decl.clone(), e.path.clone()))
        .collect();
    let ours = |name: &str| {
        before
            .iter()
            .any(|e| e.decl.name == name && e.state == DeclaredState::Resident)
            && state.models().get(name).is_some()
    };
    let actions = plan(&old, &new, &ours);
    state.declared.set_declared(&new);
    state.changed.notify_one();
    for action in actions {
        apply(state, &action, &new).await;
    }
    state.changed.notify_one();
}

/// Carries out one action, recording the outcome in the book.
async fn apply(state: &Arc<State>, action: &Action, new: &[Resolved]) {
    let find = |name: &str| new.iter().find(|(d, _)| d.name == name).cloned();
    match action {
        Action::Unload(name) => {
            let Ok(_placement) = state
                .placement(format!("unloading {name:?} (removed from the config)"))
                .await
            else {
                tracing::error!(model = %name, "removed from the config but could not be unloaded: placement busy");
                return;
            };
            if let Some(model) = state.models().remove(name) {
                tracing::info!(model = %name, freed_bytes = model.memory_bytes(), "unloaded: no longer declared in the config");
            }
            state.changed.notify_one();
        }
        Action::Keep(name) => {
            if let Some((decl, path)) = find(name) {
                state.declared.applied(&decl, path);
            }
        }
        Action::Load(name) | Action::Replace(name) => {
            let Some((decl, path)) = find(name) else {
                return;
            };
            let fresh = matches!(action, Action::Replace(_));
            if !fresh && state.models().get(name).is_some() {
                state.declared.set_state(
                    name,
                    DeclaredState::Failed {
                        reason: format!(
                            "a model named {name:?} was loaded by hand (llmctl load); unload it \
                             and reload the config to load the declared one"
                        ),
                    },
                );
                return;
            }
            state.declared.applied(&decl, path);
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            match super::load_declared(state, name, tx, fresh).await {
                Ok(r) => {
                    tracing::info!(model = %name, secs = r.load_secs, replaced = r.replaced, "declared model resident");
                }
                Err(e) if fresh => {
                    // The old copy still serves (a replace swaps only on success).
                    tracing::error!(model = %name, "reloading the declared model failed; the previous copy keeps serving: {}", e.message);
                    if state.models().get(name).is_some() {
                        state.declared.update(name, |entry| {
                            entry.state = DeclaredState::Resident;
                            entry.note = Some(format!(
                                "reloading it with the new settings failed ({}); the previous \
                                 copy serves",
                                e.message
                            ));
                        });
                    }
                }
                Err(_) => {}
            }
        }
        Action::Resplit(name) => {
            let Some((decl, path)) = find(name) else {
                return;
            };
            match resplit(state, &decl).await {
                Ok(()) => state.declared.applied(&decl, path),
                Err(e) => {
                    tracing::error!(model = %name, "re-splitting the declared model failed; the old placement keeps serving: {}", e.message);
                    state.declared.update(name, |entry| {
                        entry.note = Some(format!(
                            "re-splitting it as the config says failed: {}",
                            e.message
                        ));
                    });
                }
            }
        }
    }
    state.changed.notify_one();
}

/// Moves the resident `decl.name` to `decl`'s devices and split, live.
async fn resplit(state: &Arc<State>, decl: &ModelDecl) -> Result<(), ErrorReply> {
    let _placement = state
        .placement(format!("re-splitting {:?} (config changed)", decl.name))
        .await?;
    let model = state.models().get(&decl.name).cloned().ok_or_else(|| {
        ErrorReply::new(
            llmd_shared::ErrorCode::NotFound,
            format!("{:?} is no longer resident", decl.name),
        )
    })?;
    let req = ResplitRequest {
        name: decl.name.clone(),
        devices: decl.devices.iter().map(ToString::to_string).collect(),
        split: decl.split.clone(),
        ctx: None,
    };
    let devices = state.devices();
    let memory_of = |d: &crate::state::Device| state.device_memory(d);
    let reply = model.resplit(&req, &devices, &memory_of).await?;
    tracing::info!(
        model = %decl.name,
        secs = reply.secs,
        layers_moved = reply.layers_moved,
        sequences = reply.sequences_moved,
        "declared model re-split as the config says"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, extra: &str) -> Resolved {
        let text = format!("[[models]]\nname = \"{name}\"\npath = \"/m/{name}.gguf\"\n{extra}");
        let c = crate::config::parse(&text, std::path::Path::new("/t.toml")).unwrap();
        let d = c.models[0].clone();
        let p = d.resolved_path(c.models_dir());
        (d, p)
    }

    #[test]
    fn added_removed_moved_replaced_and_untouched() {
        let old = vec![
            decl("keep", ""),
            decl("gone", ""),
            decl("move", "devices = [\"cpu:0\", \"cpu:1\"]\nsplit = [1, 1]\n"),
            decl("ctx", "ctx = 512\n"),
            decl("defaults", "temperature = 0.5\n"),
        ];
        let new = vec![
            decl("keep", ""),
            decl("move", "devices = [\"cpu:0\", \"cpu:1\"]\nsplit = [3, 1]\n"),
            decl("ctx", "ctx = 1024\n"),
            decl("defaults", "temperature = 0.9\n"),
            decl("added", ""),
            decl("lazy", "load = \"on_demand\"\n"),
        ];
        let actions = plan(&old, &new, &|n| n != "added" && n != "lazy");
        assert_eq!(
            actions,
            [
                Action::Unload("gone".into()),
                Action::Keep("keep".into()),
                Action::Resplit("move".into()),
                Action::Replace("ctx".into()),
                Action::Keep("defaults".into()),
                Action::Load("added".into()),
                Action::Keep("lazy".into()),
            ]
        );
    }

    #[test]
    fn a_changed_file_replaces_and_a_failed_start_model_loads_again() {
        let old = vec![decl("a", ""), decl("b", "")];
        let mut moved = decl("a", "");
        moved.1 = PathBuf::from("/elsewhere/a.gguf");
        let new = vec![moved, decl("b", "")];
        // b is not resident (its load failed): the reload tries again.
        let actions = plan(&old, &new, &|n| n == "a");
        assert_eq!(
            actions,
            [Action::Replace("a".into()), Action::Load("b".into())]
        );
        // Removing a model that is not resident does nothing.
        assert_eq!(plan(&old, &[], &|_| false), []);
        // A start model declared on demand now stays resident until its keep-alive.
        let lazy = vec![decl("a", "load = \"on_demand\"\n")];
        assert_eq!(
            plan(&old[..1], &lazy, &|_| true),
            [Action::Keep("a".into())]
        );
    }
}
