//! `Find`: names matching a pattern, a page at a time in ID order. A page holds only what the
//! peer could see, and a short page means "no more" to every client, so hits left out are made
//! up from further down the index.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use deskd_db::{Object, Read};
use deskd_proto::{ErrorCode, ErrorReply, Response};

use super::errors::db_error;
use super::wire::{info, join};
use super::{Reading, Reply, MAX_FIND_LIMIT};
use crate::sight;

/// A hit, its folder's path components (empty for the root itself; `None` for the root's
/// own record) and its whole path, joined.
type Candidate = (Object, Option<std::sync::Arc<Vec<Vec<u8>>>>, Vec<u8>);

/// A folder's path, looked up once per request: its components (for the peer's sight) and
/// the same joined with `/` (for the answers).
struct Folder {
    components: std::sync::Arc<Vec<Vec<u8>>>,
    joined: Vec<u8>,
}

/// `Find`: at most `limit` (clamped to 1..=[`MAX_FIND_LIMIT`]) objects whose name matches
/// `pattern`, with IDs above `after_id`.
pub(super) fn find<R: Read>(
    r: &Reading<'_, R>,
    pattern: &str,
    mode: deskd_proto::FindMode,
    limit: u32,
    after_id: u32,
) -> Reply {
    if mode == deskd_db::FindMode::Glob {
        if let Some(at) = deskd_db::names::unclosed_bracket(pattern) {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "glob {pattern:?}: the '[' at byte {at} has no closing ']' \
                     (a literal '[' is written [[])"
                ),
            ));
        }
    }
    let limit = limit.clamp(1, MAX_FIND_LIMIT);
    let mut query = deskd_db::FindQuery {
        pattern: pattern.to_owned(),
        mode,
        limit,
        after_id,
    };
    let mut out = Vec::new();
    // Hits share folders: each folder's path is looked up (and joined) once per request, and
    // a hit's path is its folder's plus its name: one allocation a hit.
    let mut folders: HashMap<u32, Folder> = HashMap::new();
    loop {
        let hits = match r.read_cache {
            Some(cache) => r
                .names
                .find_with(r.db, &query, |ids| cache.get_many(r.db, ids)),
            None => r.names.find(r.db, &query),
        }
        .map_err(db_error)?;
        let last_page = (hits.len() as u32) < limit;
        // The folders of this page not looked up yet, all in one call (one round trip on
        // PostgreSQL, where a `path_of` a folder was one each: issue 28).
        let mut missing: Vec<u32> = hits
            .iter()
            .filter(|o| o.id != deskd_db::ROOT_ID && !folders.contains_key(&o.parent))
            .map(|o| o.parent)
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let paths: Vec<std::sync::Arc<Vec<Vec<u8>>>> = match r.read_cache {
                Some(cache) => cache.paths_of(r.db, &missing),
                None => {
                    r.db.paths_of(&missing)
                        .map(|p| p.into_iter().map(std::sync::Arc::new).collect())
                }
            }
            .map_err(db_error)?;
            for (id, components) in missing.into_iter().zip(paths) {
                let joined = join(&components);
                folders.insert(id, Folder { components, joined });
            }
        }
        let mut candidates: Vec<Candidate> = Vec::with_capacity(hits.len());
        for o in hits {
            query.after_id = o.id;
            // deskd's own files are never shown.
            if deskd_volume::is_protected(&o.name) {
                continue;
            }
            if o.id == deskd_db::ROOT_ID {
                candidates.push((o, None, Vec::new()));
                continue;
            }
            let folder = match folders.entry(o.parent) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let components = r.db.path_of(o.parent).map_err(db_error)?;
                    let joined = join(&components);
                    e.insert(Folder {
                        components: std::sync::Arc::new(components),
                        joined,
                    })
                }
            };
            let mut path = Vec::with_capacity(folder.joined.len() + 1 + o.name.len());
            path.extend_from_slice(&folder.joined);
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend_from_slice(&o.name);
            candidates.push((o, Some(folder.components.clone()), path));
        }
        let shown = shown_to_peer(r, &candidates)?;
        for ((o, _, path), shown) in candidates.into_iter().zip(shown) {
            if shown && (out.len() as u32) < limit {
                out.push(info(&o, Some(path), false));
            }
        }
        if out.len() as u32 >= limit || last_page {
            break;
        }
    }
    Ok(Response::Objects(out))
}

/// Which candidates the peer may see, in order. The folders' own records (for their dev/ino)
/// are read before the change of identity; then one change of identity serves the whole page,
/// and each folder is looked at once.
fn shown_to_peer<R: Read>(
    r: &Reading<'_, R>,
    candidates: &[Candidate],
) -> Result<Vec<bool>, ErrorReply> {
    if r.access.is_trusted() {
        return Ok(vec![true; candidates.len()]);
    }
    let mut holders: HashMap<u32, Option<Object>> = HashMap::new();
    if let Some(cache) = r.read_cache {
        // A PostgreSQL volume's: the holders through the read cache, the misses in one read.
        let mut ids: Vec<u32> = candidates
            .iter()
            .filter(|(_, folder, _)| folder.is_some())
            .map(|(o, _, _)| o.parent)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        for o in cache.get_many(r.db, &ids).map_err(db_error)? {
            holders.insert(o.id, Some(o));
        }
    }
    for (o, folder, _) in candidates {
        if folder.is_some() {
            if let Entry::Vacant(e) = holders.entry(o.parent) {
                // Not found above: the same answer (or error) as without the cache.
                e.insert(Some(r.db.get(o.parent).map_err(db_error)?));
            }
        }
    }
    Ok(r.access
        .wear(|| {
            let mut seen: HashMap<u32, bool> = HashMap::new();
            candidates
                .iter()
                .map(|(o, folder, _)| {
                    let holder = if folder.is_none() { u32::MAX } else { o.parent };
                    *seen.entry(holder).or_insert_with(|| {
                        let holder_record = holders.get(&o.parent).and_then(|f| f.as_ref());
                        // The hit's own path components, as sight walks them.
                        let components: Vec<Vec<u8>> = folder
                            .iter()
                            .flat_map(|f| f.iter().cloned())
                            .chain(folder.is_some().then(|| o.name.clone()))
                            .collect();
                        sight::look_as_peer(
                            r.vol,
                            r.access.viewer(),
                            o,
                            holder_record,
                            &components,
                            sight::Ask::default(),
                        )
                        .seen
                    })
                })
                .collect()
        })
        .unwrap_or_else(|| vec![false; candidates.len()]))
}
