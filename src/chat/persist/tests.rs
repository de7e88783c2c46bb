use super::super::{ChatConfig, ChatConn};
use super::*;
use crate::app::{App, Message};
use serde_json::Value;
use std::sync::Mutex;
use std::time::Instant;

/// A store in memory whose outcomes the test decides: batches wait in
/// `given` until the test answers them.
#[derive(Default)]
struct Fake {
    given: Mutex<Vec<Batch>>,
    done: Mutex<Vec<Committed>>,
}

struct FakeStore(Arc<Fake>);

impl Store for FakeStore {
    fn commit(&self, batch: Batch) {
        self.0.given.lock().unwrap().push(batch);
    }

    fn take(&self, into: &mut Vec<Committed>) {
        into.append(&mut self.0.done.lock().unwrap());
    }
}

impl Fake {
    /// Answers every batch given so far; returns them.
    fn answer(&self, result: Result<(), String>) -> Vec<Batch> {
        let batches = std::mem::take(&mut *self.given.lock().unwrap());
        let mut done = self.done.lock().unwrap();
        done.extend(batches.iter().map(|batch| Committed { id: batch.id, result: result.clone() }));
        batches
    }
}

fn id(n: usize) -> ConnId {
    ConnId { index: n, generation: n as u64 }
}

struct T {
    chat: Chat,
    fake: Arc<Fake>,
    now: Instant,
}

impl T {
    fn new(config: ChatConfig, loaded: Loaded) -> T {
        let fake = Arc::new(Fake::default());
        let mut chat = Chat::new(ChatConfig { rate_limit_per_sec: 0, ..config });
        chat.persist(Box::new(FakeStore(Arc::clone(&fake))), loaded);
        T { chat, fake, now: Instant::now() }
    }

    /// Joins with `query`; what the call did.
    fn join(&mut self, who: ConnId, query: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut conn = ChatConn { query: query.into() };
        self.chat.on_open(&mut conn, &mut Context::recording(who, self.now, || 0, &mut effects));
        effects
    }

    fn say(&mut self, who: ConnId, text: &str) -> Vec<Effect> {
        let mut effects = Vec::new();
        let mut conn = ChatConn::default();
        let mut ctx = Context::recording(who, self.now, || 0, &mut effects);
        self.chat.on_message(&mut conn, Message::Text(text), &mut ctx);
        effects
    }

    fn leave(&mut self, who: ConnId) {
        let mut effects = Vec::new();
        let closed = crate::app::Closed::from_info(None);
        self.chat.on_close(ChatConn::default(), &closed, &mut Context::recording(who, self.now, || 0, &mut effects));
    }

    /// The turn ends; the store answers; what the chat then does.
    fn commit(&mut self, result: Result<(), String>) -> (Vec<Batch>, Vec<Effect>) {
        self.chat.flush_store();
        let batches = self.fake.answer(result);
        let mut effects = Vec::new();
        self.chat.take_committed(&mut effects);
        (batches, effects)
    }
}

fn event(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap()
}

/// The events among `effects` published to rooms, and sent to one connection.
fn published(effects: &[Effect]) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|e| if let Effect::Publish { bytes, .. } = e { Some(event(bytes)) } else { None })
        .collect()
}

fn sent(effects: &[Effect], to: ConnId) -> Vec<Value> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { to: t, bytes, .. } if *t == to => Some(event(bytes)),
            _ => None,
        })
        .collect()
}

fn welcome(effects: &[Effect], to: ConnId) -> Value {
    sent(effects, to).into_iter().find(|e| e["type"] == "welcome").expect("a welcome")
}

#[test]
fn a_message_is_shown_only_once_its_batch_is_committed_and_a_turn_is_one_batch() {
    let mut t = T::new(ChatConfig::default(), Loaded::default());
    t.join(id(1), "room=r&nick=a");
    assert!(published(&t.say(id(1), "one")).is_empty(), "not shown before the commit");
    t.say(id(1), "two");
    t.chat.flush_store();
    // A turn later, while the first batch is still being written: it waits.
    t.say(id(1), "three");
    t.chat.flush_store();
    let given = std::mem::take(&mut *t.fake.given.lock().unwrap());
    assert_eq!(given.len(), 1, "one batch in flight");
    let batch = &given[0];
    assert_eq!(batch.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(batch.rooms, [RoomState { name: "r".into(), epoch: batch.rooms[0].epoch.clone(), seq: 2 }]);
    // A newcomer before the commit sees none of them, and seq 0.
    let joined = t.join(id(2), "room=r&nick=b");
    assert_eq!(welcome(&joined, id(2))["seq"], 0);
    t.fake.done.lock().unwrap().push(Committed { id: batch.id, result: Ok(()) });
    let mut effects = Vec::new();
    t.chat.take_committed(&mut effects);
    let shown: Vec<(u64, String)> =
        published(&effects).iter().map(|e| (e["seq"].as_u64().unwrap(), e["text"].to_string())).collect();
    assert_eq!(shown, [(1, "\"one\"".into()), (2, "\"two\"".into())]);
    // The next turn takes the third.
    let (batches, effects) = t.commit(Ok(()));
    assert_eq!(batches.len(), 1);
    assert_eq!(published(&effects)[0]["seq"], 3);
    let joined = t.join(id(3), "room=r&nick=c");
    let w = welcome(&joined, id(3));
    assert_eq!(w["seq"], 3);
    assert_eq!(w["history"].as_array().unwrap().len(), 3);
}

#[test]
fn a_failed_batch_is_refused_with_unavailable_and_its_numbers_are_used_again() {
    let mut t = T::new(ChatConfig::default(), Loaded::default());
    t.join(id(1), "room=r&nick=a");
    t.join(id(2), "room=r&nick=b");
    t.say(id(1), "kept");
    t.commit(Ok(()));
    t.say(id(1), "lost");
    t.say(id(2), "lost too");
    let (_, effects) = t.commit(Err("disk full".into()));
    assert!(published(&effects).is_empty(), "nothing of a failed batch is shown");
    for who in [id(1), id(2)] {
        let errors = sent(&effects, who);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0]["code"], "unavailable");
    }
    t.say(id(2), "after");
    let (batches, effects) = t.commit(Ok(()));
    assert_eq!(batches[0].records[0].seq, 2, "the failed numbers are used again");
    assert_eq!(published(&effects)[0]["seq"], 2);
    let w = welcome(&t.join(id(3), "room=r"), id(3));
    let texts: Vec<&str> = w["history"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["kept", "after"]);
}

#[test]
fn an_empty_room_keeps_its_numbering_and_epoch_without_counting_as_a_room() {
    let config = ChatConfig { max_rooms: 2, ..ChatConfig::default() };
    let mut t = T::new(config, Loaded::default());
    let w = welcome(&t.join(id(1), "room=quiet&nick=a"), id(1));
    let epoch = w["epoch"].clone();
    t.say(id(1), "hello");
    t.commit(Ok(()));
    t.leave(id(1));
    assert_eq!(t.chat.room_count(), 1, "only the lobby counts");
    // Another room can be made (the maximum is 2, lobby included).
    welcome(&t.join(id(2), "room=other"), id(2));
    assert_eq!(t.chat.room_count(), 2);
    t.leave(id(2));
    // Coming back: same epoch, the count goes on, the history is there.
    let w = welcome(&t.join(id(3), "room=quiet&since=0&epoch=".to_string().as_str()), id(3));
    assert_eq!(w["epoch"], epoch);
    assert_eq!(w["seq"], 1);
    let w = welcome(&t.join(id(4), &format!("room=quiet&since=0&epoch={}", epoch.as_str().unwrap())), id(4));
    assert_eq!(w["recovered"], true);
    t.say(id(4), "again");
    let (_, effects) = t.commit(Ok(()));
    assert_eq!(published(&effects)[0]["seq"], 2);
    // `other` never said anything: it is gone, and forgotten on no disk.
    assert!(t.chat.persist.as_ref().unwrap().dormant.is_empty());
}

#[test]
fn what_the_byte_bound_pushes_out_is_dropped_from_the_disk_and_an_emptied_dormant_room_forgotten() {
    // Room for two messages of this size in all rooms together.
    let text = "x".repeat(200);
    let entry = 200 + 100 + crate::chat::history::ENTRY_OVERHEAD;
    let mut t = T::new(ChatConfig { history_bytes: 2 * entry, ..ChatConfig::default() }, Loaded::default());
    t.join(id(1), "room=old&nick=a");
    t.say(id(1), &text);
    t.commit(Ok(()));
    t.leave(id(1));
    t.join(id(2), "room=new&nick=b");
    t.say(id(2), &text);
    t.say(id(2), &text);
    t.commit(Ok(()));
    // The third message pushed out room old's only one: old is forgotten next.
    t.say(id(2), &text);
    let (batches, _) = t.commit(Ok(()));
    let batch = &batches[0];
    assert_eq!(batch.forget, [Arc::<str>::from("old")], "{batch:?}");
    assert!(batch.drop.iter().all(|(room, _)| &**room != "old"), "the forget covers the drop: {batch:?}");
    let (batches, _) = t.commit(Ok(()));
    assert_eq!(batches[0].drop, [(Arc::<str>::from("new"), 1)], "new's first went too");
    let w = welcome(&t.join(id(3), "room=old"), id(3));
    assert_eq!(w["seq"], 0, "a new life");
}

#[test]
fn rooms_come_back_from_what_the_store_loaded() {
    let record = |seq: u64, text: &str| Record {
        room: "back".into(),
        seq,
        event: events::message("back", "a", text, 0, seq, false).into(),
    };
    let loaded = Loaded {
        rooms: vec![
            (
                RoomState { name: "back".into(), epoch: "feedfacefeedface".into(), seq: 7 },
                vec![record(6, "six"), record(7, "seven")],
            ),
            (RoomState { name: "empty".into(), epoch: "0000000000000000".into(), seq: 3 }, vec![]),
            (RoomState { name: "lobby".into(), epoch: "1111111111111111".into(), seq: 4 }, vec![]),
            (RoomState { name: "Not A Room!".into(), epoch: "2222222222222222".into(), seq: 1 }, vec![]),
        ],
    };
    let mut t = T::new(ChatConfig::default(), loaded);
    let w = welcome(&t.join(id(1), "room=back&since=5&epoch=feedfacefeedface"), id(1));
    assert_eq!((w["seq"].as_u64(), w["recovered"].as_bool()), (Some(7), Some(true)));
    assert_eq!(w["history"].as_array().unwrap().len(), 2);
    let w = welcome(&t.join(id(2), ""), id(2));
    assert_eq!((w["epoch"].as_str(), w["seq"].as_u64()), (Some("1111111111111111"), Some(4)));
    // What holds nothing to resume from is forgotten in the first batch.
    t.say(id(1), "eight");
    let (batches, effects) = t.commit(Ok(()));
    assert_eq!(published(&effects)[0]["seq"], 8);
    assert_eq!(batches[0].forget, [Arc::<str>::from("empty"), Arc::<str>::from("Not A Room!")]);
}

#[test]
fn senders_are_paused_while_too_much_waits_for_the_disk() {
    let mut t = T::new(ChatConfig::default(), Loaded::default());
    t.join(id(1), "room=r&nick=a");
    t.say(id(1), "first");
    t.chat.flush_store(); // in flight, never answered
    let pause = |effects: &[Effect]| effects.iter().any(|e| matches!(e, Effect::Pause { .. }));
    for _ in 0..MAX_PENDING - 1 {
        assert!(!pause(&t.say(id(1), "m")));
    }
    assert!(pause(&t.say(id(1), "m")), "paused at the bound");
    assert!(pause(&t.say(id(1), "m")), "and while over it (nothing is dropped)");
    let (_, effects) = t.commit(Ok(()));
    assert_eq!(published(&effects).len(), 1);
    let (_, effects) = t.commit(Ok(()));
    assert_eq!(published(&effects).len(), MAX_PENDING + 1, "every waiting message shown");
}

#[test]
fn past_twice_the_bound_a_message_is_refused_not_kept_waiting() {
    let mut t = T::new(ChatConfig::default(), Loaded::default());
    t.join(id(1), "room=r&nick=a");
    t.say(id(1), "first");
    t.chat.flush_store(); // in flight, never answered
    for _ in 0..2 * MAX_PENDING {
        let effects = t.say(id(1), "m");
        assert!(sent(&effects, id(1)).is_empty(), "taken while under twice the bound: {effects:?}");
    }
    let effects = t.say(id(1), "one too many");
    let errors = sent(&effects, id(1));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["code"], "unavailable");
    assert!(effects.iter().any(|e| matches!(e, Effect::Pause { .. })), "and the sender is slowed down");
    assert_eq!(t.chat.persist.as_ref().unwrap().waiting(), 2 * MAX_PENDING + 1);
    // What was taken is all shown, numbered without a gap for the refused one.
    t.commit(Ok(()));
    let (_, effects) = t.commit(Ok(()));
    let shown = published(&effects);
    assert_eq!(shown.len(), 2 * MAX_PENDING);
    assert_eq!(shown.last().unwrap()["seq"], 2 * MAX_PENDING as u64 + 1);
    assert_eq!(shown.last().unwrap()["text"], "m");
    t.say(id(1), "later");
    let (_, effects) = t.commit(Ok(()));
    assert_eq!(published(&effects)[0]["seq"], 2 * MAX_PENDING as u64 + 2, "taken again once it caught up");
}

#[test]
fn messages_said_while_a_batch_failed_are_numbered_again_after_the_last_committed() {
    let mut t = T::new(ChatConfig::default(), Loaded::default());
    t.join(id(1), "room=r&nick=a");
    t.join(id(2), "room=other&nick=b");
    t.say(id(1), "kept");
    t.commit(Ok(()));
    t.say(id(1), "lost");
    t.say(id(2), "lost in other");
    t.chat.flush_store(); // in flight: r 2, other 1
    t.say(id(1), "waits");
    t.say(id(1), "waits too");
    t.say(id(2), "waits in other");
    let failed = t.fake.answer(Err("disk full".into()));
    assert_eq!(failed.len(), 1);
    let mut effects = Vec::new();
    t.chat.take_committed(&mut effects);
    assert_eq!(sent(&effects, id(1)).len(), 1, "only the failed one is refused");
    let (batches, effects) = t.commit(Ok(()));
    let seqs: Vec<(&str, u64)> = batches[0].records.iter().map(|r| (&*r.room, r.seq)).collect();
    assert_eq!(seqs, [("r", 2), ("r", 3), ("other", 1)]);
    let shown: Vec<(String, u64)> = published(&effects)
        .iter()
        .map(|e| (e["text"].as_str().unwrap().to_string(), e["seq"].as_u64().unwrap()))
        .collect();
    assert_eq!(shown, [("waits".into(), 2), ("waits too".into(), 3), ("waits in other".into(), 1)]);
    assert_eq!(batches[0].rooms.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 1]);
    let w = welcome(&t.join(id(3), "room=r"), id(3));
    let texts: Vec<&str> = w["history"].as_array().unwrap().iter().map(|m| m["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["kept", "waits", "waits too"]);
    assert_eq!(w["seq"], 3);
}

#[test]
fn a_drop_given_back_beside_a_forget_of_its_room_is_not_written() {
    // Room for two messages of this size in all rooms together.
    let text = "x".repeat(200);
    let entry = 200 + 100 + crate::chat::history::ENTRY_OVERHEAD;
    let mut t = T::new(ChatConfig { history_bytes: 2 * entry, ..ChatConfig::default() }, Loaded::default());
    t.join(id(1), "room=x&nick=a");
    t.say(id(1), &text);
    t.commit(Ok(()));
    t.join(id(2), "room=y&nick=b");
    t.say(id(2), &text);
    t.say(id(2), &text);
    t.commit(Ok(())); // pushes x's only message out while x has a member: a drop, no forget
    t.say(id(2), &text);
    t.chat.flush_store(); // carries the drop of x 1
    t.leave(id(1)); // x has nothing left: forgotten while the drop is being written
    assert_eq!(t.fake.answer(Err("disk full".into())).first().map(|b| b.drop.clone()), Some(vec![("x".into(), 1)]));
    let mut effects = Vec::new();
    t.chat.take_committed(&mut effects);
    // x again: a new life, numbered from 1, beside the old life's drop and forget.
    let w = welcome(&t.join(id(3), "room=x&nick=c"), id(3));
    assert_eq!(w["seq"], 0);
    t.say(id(3), "new life");
    let (batches, effects) = t.commit(Ok(()));
    let batch = &batches[0];
    assert!(batch.forget.contains(&Arc::from("x")), "{batch:?}");
    assert!(batch.drop.iter().all(|(room, _)| &**room != "x"), "the old drop would hide the new x 1: {batch:?}");
    assert!(published(&effects).iter().any(|e| e["room"] == "x" && e["seq"] == 1));
}
