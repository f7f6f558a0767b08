//! Task events: what the shim publishes to containerd, and the guest's events (process output,
//! exits) followed for the life of the sandbox.

use std::sync::Arc;

use coffer_agent::protocol::client::EventReceiver;
use coffer_agent::protocol::Event;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;

use crate::io::close_all;
use crate::pod::{Pod, ProcessExit, VM_GONE_EXIT};
use crate::process::Exit;

impl Pod {
    pub(crate) async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let Some(publisher) = &self.publisher else {
            return;
        };
        if let Err(e) = publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "cannot publish event to containerd");
        }
    }

    pub(crate) async fn publish_exit(
        &self,
        container_id: &str,
        exec_id: Option<&str>,
        pid: u32,
        exit: Exit,
    ) {
        let event = TaskExit {
            container_id: container_id.to_string(),
            id: exec_id.unwrap_or(container_id).to_string(),
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }

    /// Records a process's exit once its output has been written out, then tells containerd.
    async fn process_exited(&self, id: &str, exec_id: Option<&str>, exit: Exit) {
        let io = {
            let mut tasks = self.tasks.lock().await;
            let Some(p) = tasks.process_mut(id, exec_id) else {
                return;
            };
            if p.exit().is_some() {
                return;
            }
            p.io.take()
        };
        // Output first: containerd reads the FIFOs to their end before it reports the exit
        // (ExecSync's result, the container log).
        if let Some(io) = io {
            io.close().await;
        }
        let pid = {
            let mut tasks = self.tasks.lock().await;
            let Some(p) = tasks.process_mut(id, exec_id) else {
                return;
            };
            if !p.set_exited(exit) {
                return;
            }
            if p.starting {
                // Published by the start, after its own event.
                p.exit_held = true;
                return;
            }
            p.pid
        };
        tracing::info!(container = id, exec = ?exec_id, code = exit.code, "process exited");
        self.publish_exit(id, exec_id, pid, exit).await;
    }

    /// Marks every process that has not exited as exited (the VM is gone, for the reason
    /// `why`), closing its output; returns what must be published.
    async fn all_exited(&self, why: &str) -> Vec<ProcessExit> {
        let (ios, exits) = {
            let mut tasks = self.tasks.lock().await;
            tasks.vm_gone.get_or_insert_with(|| why.to_owned());
            tasks.exit_all(false)
        };
        close_all(ios).await;
        exits
    }

    /// Follows the guest's events until the agent connection closes.
    pub(crate) async fn follow_events(self: Arc<Self>, mut events: EventReceiver) {
        while let Some(event) = events.recv().await {
            match event {
                Event::Output {
                    id,
                    exec_id,
                    stream,
                    data,
                } => {
                    let mut tasks = self.tasks.lock().await;
                    if let Some(io) = tasks
                        .process_mut(&id, exec_id.as_deref())
                        .and_then(|p| p.io.as_mut())
                    {
                        io.write(stream, data);
                    }
                }
                Event::Oom { id } => {
                    // containerd's CRI marks the container OOMKilled when it then exits.
                    tracing::warn!(container = %id, "the OOM killer killed a process of the container");
                    let event = TaskOOM {
                        container_id: id,
                        ..Default::default()
                    };
                    self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
                        .await;
                }
                Event::Exit {
                    id,
                    exec_id,
                    status,
                } => {
                    let code = u32::try_from(status.code).unwrap_or(VM_GONE_EXIT);
                    self.process_exited(&id, exec_id.as_deref(), Exit::now(code))
                        .await;
                }
            }
        }
        // The connection is gone: the VM stopped (asked or not). Whatever still ran is dead.
        tracing::info!("guest agent connection closed");
        let why = "its guest agent's connection closed (the VM exited)";
        for e in self.all_exited(why).await {
            self.publish_exit(&e.id, e.exec_id.as_deref(), e.pid, e.exit)
                .await;
        }
    }
}
