//! The control dataflow: small messages between the workers of a run, across
//! processes: the checkpoint protocol's requests, acks and cuts, and each worker's
//! final counts for the run's summary.
//!
//! It runs beside the main dataflow on every worker. Messages never wait for
//! progress; a worker reads what arrived from [`ControlPlane::take`]
//! after each step.

use std::cell::RefCell;
use std::rc::Rc;

use timely::dataflow::InputHandleVec;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::vec::Broadcast;
use timely::dataflow::operators::vec::Input;
use timely::dataflow::operators::{Exchange, Inspect};
use timely::worker::Worker;

use crate::checkpoint::protocol::Control;

/// Sends `message` now: an exchange holds records back until its input's time moves
/// on, so every message gets a time of its own.
fn send(input: &mut InputHandleVec<u64, Control>, message: Control) {
    input.send(message);
    let next = input.time() + 1;
    input.advance_to(next);
}

/// One worker's end of the control dataflow.
pub struct ControlPlane {
    to_all: Option<InputHandleVec<u64, Control>>,
    to_zero: Option<InputHandleVec<u64, Control>>,
    inbox: Rc<RefCell<Vec<Control>>>,
}

impl ControlPlane {
    /// Builds the control dataflow on `worker`.
    pub fn new(worker: &mut Worker) -> ControlPlane {
        let inbox = Rc::new(RefCell::new(Vec::new()));
        let received = Rc::clone(&inbox);
        let (to_all, to_zero) = worker.dataflow::<u64, _, _>(|scope| {
            let (to_all, broadcast) = scope.new_input::<Control>();
            let (to_zero, gathered) = scope.new_input::<Control>();
            broadcast
                .broadcast()
                .concat(gathered.exchange(|_| 0))
                .inspect(move |message| received.borrow_mut().push(message.clone()));
            (to_all, to_zero)
        });
        ControlPlane {
            to_all: Some(to_all),
            to_zero: Some(to_zero),
            inbox,
        }
    }

    /// Sends `message` to every worker (this one included).
    pub fn broadcast(&mut self, message: Control) {
        if let Some(input) = self.to_all.as_mut() {
            send(input, message);
        }
    }

    /// Sends `message` to worker 0.
    pub fn to_zero(&mut self, message: Control) {
        if let Some(input) = self.to_zero.as_mut() {
            send(input, message);
        }
    }

    /// The messages that arrived since the last call.
    pub fn take(&self) -> Vec<Control> {
        std::mem::take(&mut *self.inbox.borrow_mut())
    }

    /// Sends nothing more; the dataflow ends once every worker has closed.
    pub fn close(&mut self) {
        self.to_all = None;
        self.to_zero = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::protocol::Control;

    #[test]
    fn messages_reach_worker_zero_and_everyone() {
        let guards = timely::execute(timely::Config::process(2), |worker| {
            let mut control = ControlPlane::new(worker);
            let index = worker.index();
            control.to_zero(Control::Complete { epoch: index as u64 });
            if index == 1 {
                control.broadcast(Control::Request { epoch: 9 });
            }
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let want = if index == 0 { 3 } else { 1 };
            while seen.len() < want && std::time::Instant::now() < deadline {
                worker.step();
                seen.extend(control.take());
            }
            control.close();
            while worker.has_dataflows() {
                worker.step();
            }
            seen.sort_by_key(|m| format!("{m:?}"));
            seen
        })
        .unwrap();
        let seen: Vec<Vec<Control>> = guards.join().into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(
            seen[0],
            vec![
                Control::Complete { epoch: 0 },
                Control::Complete { epoch: 1 },
                Control::Request { epoch: 9 }
            ]
        );
        assert_eq!(seen[1], vec![Control::Request { epoch: 9 }]);
    }
}
