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
//!
//! The caller (the server, which owns the configuration) turns each `[[models]]` entry into a
//! [`LoadSpec`]; this module never reads the configuration file itself.

use llmd_shared::DeclaredState;

use super::{LoadSpec, ResplitSpec, Runtime};
use crate::config::{LoadPolicy, ModelDecl};

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

/// A declaration with the load specification it makes (its file resolved against
/// `models_dir`).
pub type Resolved = (ModelDecl, LoadSpec);

/// Whether a declared model must be loaded again to go from `old` to `new`: its file, context,
/// threads, cache types, GPU layers (which change the devices a re-split would move between),
/// prefix cache budget or chat template changed (experts moving to or from the host are a live re-split's).
fn needs_reload(old: &Resolved, new: &Resolved) -> bool {
    let ((o, os), (n, ns)) = (old, new);
    os.path != ns.path
        || os.ctx != ns.ctx
        || os.threads != ns.threads
        || os.kv_types != ns.kv_types
        || os.gpu_layers != ns.gpu_layers
        || os.prefix_cache_bytes != ns.prefix_cache_bytes
        || o.chat_template != n.chat_template
}

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
    for resolved in new {
        let n = &resolved.0;
        let name = n.name.clone();
        let before = old.iter().find(|(o, _)| o.name == n.name);
        let action = match before {
            Some(prev) if resident(&name) => {
                if needs_reload(prev, resolved) {
                    Action::Replace(name)
                } else if prev.0.placement_differs(n) || prev.1.n_cpu_moe != resolved.1.n_cpu_moe {
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

impl Runtime {
    /// Makes the resident declared models match `new` (the configuration's `[[models]]`, in
    /// its order), waiting for a reconciliation already running so that the last configuration
    /// wins. Runs until every action is done: spawn it to serve meanwhile.
    pub async fn reconcile(&self, new: Vec<Resolved>) {
        let _turn = self.declared.reconcile.lock().await;
        let before = self.declared.snapshot();
        let old: Vec<Resolved> = before
            .iter()
            .map(|e| (e.decl.clone(), e.spec.clone()))
            .collect();
        let ours = |name: &str| {
            before
                .iter()
                .any(|e| e.decl.name == name && e.state == DeclaredState::Resident)
                && self.models().get(name).is_some()
        };
        let actions = plan(&old, &new, &ours);
        self.declared.set_declared(&new);
        self.changed.notify_one();
        for action in actions {
            self.apply(&action, &new).await;
            self.changed.notify_one();
        }
    }

    /// Carries out one action, recording the outcome in the book.
    async fn apply(&self, action: &Action, new: &[Resolved]) {
        let find = |name: &str| new.iter().find(|(d, _)| d.name == name).cloned();
        match action {
            Action::Unload(name) => match self.unload(name).await {
                Ok(_) => {
                    tracing::info!(model = %name, "unloaded: no longer declared in the config")
                }
                Err(e) => {
                    tracing::error!(model = %name, "removed from the config but not unloaded: {e}")
                }
            },
            Action::Keep(name) => {
                if let Some((decl, spec)) = find(name) {
                    self.declared.applied(&decl, &spec);
                }
            }
            Action::Load(name) | Action::Replace(name) => {
                let Some((decl, spec)) = find(name) else {
                    return;
                };
                let fresh = matches!(action, Action::Replace(_));
                if !fresh && self.models().get(name).is_some() {
                    self.declared.set_state(
                        name,
                        DeclaredState::Failed {
                            reason: format!(
                                "a model named {name:?} was loaded by hand (llmctl load); unload \
                                 it and reload the config to load the declared one"
                            ),
                        },
                    );
                    return;
                }
                self.declared.applied(&decl, &spec);
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
                match self.load_declared(name, tx, fresh).await {
                    Ok(loaded) => tracing::info!(
                        model = %name,
                        secs = loaded.as_ref().map_or(0.0, |l| l.load_secs),
                        "declared model resident"
                    ),
                    Err(e) if fresh && self.models().get(name).is_some() => {
                        // A replace swaps only on success: the previous copy still serves.
                        tracing::error!(model = %name, "reloading the declared model failed; the previous copy keeps serving: {e}");
                        self.declared.update(name, |entry| {
                            entry.state = DeclaredState::Resident;
                            entry.note = Some(format!(
                                "loading it with the new settings failed ({e}); the previous \
                                 copy serves"
                            ));
                        });
                    }
                    Err(_) => {}
                }
            }
            Action::Resplit(name) => {
                let Some((decl, spec)) = find(name) else {
                    return;
                };
                let resplit = ResplitSpec {
                    devices: spec.devices.clone(),
                    split: spec.split.clone(),
                    ctx: None,
                    n_cpu_moe: Some(spec.n_cpu_moe.unwrap_or(0)),
                };
                match self.resplit(name, &resplit, self.devices()).await {
                    Ok(done) => {
                        tracing::info!(
                            model = %name,
                            secs = done.secs,
                            layers_moved = done.layers_moved,
                            sequences = done.sequences_moved,
                            "declared model re-split as the config says"
                        );
                        self.declared.applied(&decl, &spec);
                    }
                    Err(e) => {
                        tracing::error!(model = %name, "re-splitting the declared model failed; the old placement keeps serving: {e}");
                        self.declared.update(name, |entry| {
                            entry.note =
                                Some(format!("re-splitting it as the config says failed: {e}"));
                        });
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(name: &str, extra: &str) -> Resolved {
        let text = format!("[[models]]\nname = \"{name}\"\npath = \"/m/{name}.gguf\"\n{extra}");
        let c = crate::config::parse(&text, std::path::Path::new("/t.toml")).unwrap();
        let d = c.models[0].clone();
        let spec = LoadSpec {
            path: d.resolved_path(c.models_dir()),
            ctx: d.ctx,
            threads: d.threads,
            devices: d.devices.iter().map(ToString::to_string).collect(),
            split: d.split.clone(),
            kv_types: Default::default(),
            gpu_layers: d.gpu_layers,
            n_cpu_moe: d.n_cpu_moe,
            prefix_cache_bytes: 0,
        };
        (d, spec)
    }

    #[test]
    fn added_removed_moved_replaced_and_untouched() {
        let old = vec![
            decl("keep", ""),
            decl("gone", ""),
            decl("move", "devices = [\"cpu:0\", \"cpu:1\"]\nsplit = [1, 1]\n"),
            decl("ctx", "ctx = 512\n"),
            decl("defaults", "temperature = 0.5\n"),
            decl("experts", ""),
        ];
        let new = vec![
            decl("keep", ""),
            decl("move", "devices = [\"cpu:0\", \"cpu:1\"]\nsplit = [3, 1]\n"),
            decl("ctx", "ctx = 1024\n"),
            decl("defaults", "temperature = 0.9\n"),
            decl("experts", "n_cpu_moe = 4\n"),
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
                Action::Resplit("experts".into()),
                Action::Load("added".into()),
                Action::Keep("lazy".into()),
            ]
        );
    }

    #[test]
    fn a_changed_file_replaces_and_a_failed_start_model_loads_again() {
        let old = vec![decl("a", ""), decl("b", "")];
        let mut moved = decl("a", "");
        moved.1.path = "/elsewhere/a.gguf".into();
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
