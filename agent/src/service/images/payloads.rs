//! Which events record a change of the image store on this node: pure functions of the
//! state, the node and the store's records (the module's tests show each rule).

use bolt_capsule::image::ImageRecord;
use bolt_events::{NodeId, Payload};
use bolt_state::{decide, Command, DecideError, State};

use crate::service::images::ImagesError;

pub(super) fn pull_command(rec: &ImageRecord) -> Command {
    Command::PullImage {
        reference: rec.reference.clone(),
        digest: rec.manifest_digest.to_string(),
        config_digest: rec.config_digest.to_string(),
        layers: rec.layers.iter().map(|l| l.digest.to_string()).collect(),
        size: rec.size,
    }
}

/// Payloads recording that `rec.reference` names `rec` on node `me`, where it named `old`
/// before. `old_still_held`: another local reference names the old image. `tagged`: a tag of an
/// image already held (`image.tagged` when the state knows it), else a pull or import.
pub(super) fn naming_payloads(
    s: &State,
    me: NodeId,
    rec: &ImageRecord,
    old: Option<(&str, bool)>,
    tagged: bool,
) -> Result<Vec<Payload>, ImagesError> {
    let digest = rec.manifest_digest.to_string();
    let mut out = Vec::new();
    if let Some((old_digest, old_still_held)) = old {
        if old_digest != digest && !old_still_held {
            // The name moved and nothing else names the old image here: this node lets it go.
            // Refused (kept) while a capsule of this node uses it or when the state does not
            // know it.
            if let Ok(p) = decide(
                s,
                Command::RemoveImage {
                    node: me,
                    reference: rec.reference.clone(),
                    digest: old_digest.to_string(),
                },
            ) {
                out.extend(p);
            }
        }
    }
    let held = s.images.get(&digest).is_some_and(|i| i.nodes.contains(&me));
    let main = if tagged && held {
        decide(
            s,
            Command::TagImage {
                reference: rec.reference.clone(),
                digest,
            },
        )
    } else {
        decide(s, pull_command(rec))
    };
    out.extend(main.map_err(ImagesError::Decide)?);
    Ok(out)
}

/// Payloads recording that node `me` dropped the name `removed` (`image.removed`; the state
/// knows the node's other names of the image). Errs when the state refuses: the node's last
/// name of an image one of its live capsules uses.
pub(super) fn removal_payloads(
    s: &State,
    me: NodeId,
    removed: &ImageRecord,
) -> Result<Vec<Payload>, ImagesError> {
    // The fold keeps the node's hold while another of its names remains, and `decide` skips
    // the in-use check then (the image stays on the node).
    match decide(
        s,
        Command::RemoveImage {
            node: me,
            reference: removed.reference.clone(),
            digest: removed.manifest_digest.to_string(),
        },
    ) {
        Ok(p) => Ok(p),
        // The state never knew this node held it: nothing to record.
        Err(DecideError::UnknownImage(_) | DecideError::ImageNotHeld { .. }) => Ok(Vec::new()),
        Err(e) => Err(ImagesError::Decide(e)),
    }
}

/// Payloads that make the state say what the store holds on node `me`: `image.pulled` for every
/// record the state lacks, `image.removed` for every image the state says this node holds
/// without a record naming it.
pub(super) fn reconcile_payloads(s: &State, me: NodeId, records: &[ImageRecord]) -> Vec<Payload> {
    let mut out = Vec::new();
    for rec in records {
        let digest = rec.manifest_digest.to_string();
        let known = s.images.get(&digest).is_some_and(|i| i.nodes.contains(&me))
            && s.image_refs.get(&rec.reference) == Some(&digest);
        if !known {
            if let Ok(p) = decide(s, pull_command(rec)) {
                out.extend(p);
            }
        }
    }
    for (digest, img) in &s.images {
        if !img.nodes.contains(&me)
            || records
                .iter()
                .any(|r| r.manifest_digest.to_string() == *digest)
        {
            continue;
        }
        let reference = img
            .references
            .iter()
            .find(|r| !records.iter().any(|rec| &rec.reference == *r))
            .cloned()
            .unwrap_or_default();
        out.push(Payload::Image(bolt_events::payload::ImageEvent::Removed {
            reference,
            digest: digest.clone(),
        }));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeSet;

    use bolt_capsule::image::{Digest, LayerRecord};
    use bolt_events::payload::ImageEvent;
    use bolt_state::ImageInfo;

    use super::*;

    fn digest(b: u8) -> Digest {
        Digest::of(&[b])
    }

    fn rec(reference: &str, b: u8) -> ImageRecord {
        ImageRecord {
            reference: reference.to_string(),
            manifest_digest: digest(b),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            index_digest: None,
            config_digest: digest(b.wrapping_add(100)),
            layers: vec![LayerRecord {
                digest: digest(b.wrapping_add(200)),
                diff_id: digest(b.wrapping_add(50)),
                size: 10,
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            }],
            size: 20,
            os: "linux".into(),
            architecture: "amd64".into(),
            stored_at_ms: 0,
        }
    }

    const ME_SEED: [u8; 32] = [1; 32];
    const OTHER: NodeId = NodeId([2; 32]);

    fn me() -> NodeId {
        bolt_events::NodeKey::from_seed(ME_SEED).id()
    }

    fn state_holding(holders: &[(&ImageRecord, &[NodeId])]) -> State {
        let mut s = State::default();
        for (r, nodes) in holders {
            let d = r.manifest_digest.to_string();
            let img = s.images.entry(d.clone()).or_insert_with(|| ImageInfo {
                digest: d.clone(),
                ..ImageInfo::default()
            });
            img.references.insert(r.reference.clone());
            img.nodes.extend(nodes.iter().copied());
            for n in nodes.iter() {
                img.held.entry(*n).or_default().insert(r.reference.clone());
            }
            s.image_refs.insert(r.reference.clone(), d);
        }
        s
    }

    fn kinds(p: &[Payload]) -> Vec<&'static str> {
        p.iter().map(Payload::kind).collect()
    }

    #[test]
    fn a_first_pull_is_one_pulled_event_with_the_digests() {
        let r = rec("h/a:1", 1);
        let p = naming_payloads(&State::default(), me(), &r, None, false).unwrap();
        assert_eq!(kinds(&p), ["image.pulled"]);
        let Payload::Image(ImageEvent::Pulled {
            reference,
            digest,
            config_digest,
            layers,
            size,
        }) = &p[0]
        else {
            panic!("{p:?}")
        };
        assert_eq!(reference, "h/a:1");
        assert_eq!(digest, &r.manifest_digest.to_string());
        assert_eq!(config_digest, &r.config_digest.to_string());
        assert_eq!(layers, &vec![r.layers[0].digest.to_string()]);
        assert_eq!(*size, 20);
    }

    #[test]
    fn a_name_moved_off_an_image_nothing_else_names_lets_the_old_image_go() {
        let old = rec("h/a:1", 1);
        let new = rec("h/a:1", 2);
        let s = state_holding(&[(&old, &[me()])]);
        let old_d = old.manifest_digest.to_string();
        let p = naming_payloads(&s, me(), &new, Some((&old_d, false)), false).unwrap();
        assert_eq!(kinds(&p), ["image.removed", "image.pulled"]);
        // Another local name still holds the old image: only the pull.
        let p = naming_payloads(&s, me(), &new, Some((&old_d, true)), false).unwrap();
        assert_eq!(kinds(&p), ["image.pulled"]);
        // Same image again: only the pull.
        let p = naming_payloads(&s, me(), &old, Some((&old_d, false)), false).unwrap();
        assert_eq!(kinds(&p), ["image.pulled"]);
    }

    #[test]
    fn a_tag_is_tagged_when_the_state_knows_the_node_holds_it_else_pulled() {
        let src = rec("h/a:1", 1);
        let dst = rec("h/b:2", 1);
        let s = state_holding(&[(&src, &[me()])]);
        assert_eq!(
            kinds(&naming_payloads(&s, me(), &dst, None, true).unwrap()),
            ["image.tagged"]
        );
        let s = state_holding(&[(&src, &[OTHER])]);
        assert_eq!(
            kinds(&naming_payloads(&s, me(), &dst, None, true).unwrap()),
            ["image.pulled"]
        );
    }

    #[test]
    fn removing_the_last_name_is_removed_and_other_names_keep_the_hold() {
        let a = rec("h/a:1", 1);
        let b = rec("h/b:1", 1);
        let s = state_holding(&[(&a, &[me()]), (&b, &[me()])]);
        let p = removal_payloads(&s, me(), &a).unwrap();
        assert_eq!(kinds(&p), ["image.removed"]);
        // Folded in order, the node still holds the image under b only.
        let mut folded = s.clone();
        for (i, payload) in p.iter().enumerate() {
            let ev = test_event(payload.clone(), i as u64 + 1);
            bolt_state::apply(&mut folded, &ev);
        }
        let img = &folded.images[&a.manifest_digest.to_string()];
        assert!(img.nodes.contains(&me()));
        assert_eq!(img.references, BTreeSet::from(["h/b:1".to_string()]));
        assert!(!folded.image_refs.contains_key("h/a:1"));
        // The state never knew: nothing to record.
        assert!(removal_payloads(&State::default(), me(), &a)
            .unwrap()
            .is_empty());
    }

    /// A signed event of node `me()` (chain links do not matter to the fold).
    fn test_event(payload: Payload, seq: u64) -> bolt_events::Event {
        let key = bolt_events::NodeKey::from_seed(ME_SEED);
        let env = key.seal(
            seq,
            bolt_events::Hlc::new(1_000 + seq, 0),
            bolt_events::Hash::ZERO,
            &payload,
        );
        bolt_events::Event::from_bytes(&env.to_bytes()).unwrap()
    }

    #[test]
    fn reconcile_adds_what_the_store_has_and_drops_what_it_lost() {
        let kept = rec("h/a:1", 1);
        let lost = rec("h/gone:1", 3);
        let s = state_holding(&[(&lost, &[me()])]);
        let p = reconcile_payloads(&s, me(), std::slice::from_ref(&kept));
        assert_eq!(kinds(&p), ["image.pulled", "image.removed"]);
        let s = state_holding(&[(&kept, &[me()])]);
        assert!(reconcile_payloads(&s, me(), std::slice::from_ref(&kept)).is_empty());
    }
}
