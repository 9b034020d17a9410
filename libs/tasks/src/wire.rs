//! Conversions between the tasks types and the `berth.tasks.v1` messages,
//! shared by berth-taskd's service edge and berth-client.

use berth_api::protobuf::{EnumOrUnknown, MessageField};
use berth_api::tasks as pb;
use berth_metadata::wire::{any_from_pb, any_to_pb};

pub use berth_api::time::{system_time, timestamp};

use crate::{
    CreateTask, Deleted, ExecProcess, Exit, KillProcess, Metric, Mount, Process, ProcessPid,
    Status, Stdio, UpdateTask,
};

pub fn status_to_pb(status: Status) -> pb::Status {
    match status {
        Status::Unknown => pb::Status::UNKNOWN,
        Status::Created => pb::Status::CREATED,
        Status::Running => pb::Status::RUNNING,
        Status::Stopped => pb::Status::STOPPED,
        Status::Paused => pb::Status::PAUSED,
        Status::Pausing => pb::Status::PAUSING,
    }
}

pub fn status_from_pb(status: EnumOrUnknown<pb::Status>) -> Status {
    match status.enum_value() {
        Ok(pb::Status::CREATED) => Status::Created,
        Ok(pb::Status::RUNNING) => Status::Running,
        Ok(pb::Status::STOPPED) => Status::Stopped,
        Ok(pb::Status::PAUSED) => Status::Paused,
        Ok(pb::Status::PAUSING) => Status::Pausing,
        Ok(pb::Status::UNKNOWN) | Err(_) => Status::Unknown,
    }
}

pub fn mount_to_pb(mount: &Mount) -> pb::Mount {
    pb::Mount {
        type_: mount.kind.clone(),
        source: mount.source.clone(),
        options: mount.options.clone(),
        ..Default::default()
    }
}

pub fn mount_from_pb(mount: &pb::Mount) -> Mount {
    Mount {
        kind: mount.type_.clone(),
        source: mount.source.clone(),
        options: mount.options.clone(),
    }
}

pub fn exit_from_pb(
    status: u32,
    at: &MessageField<berth_api::protobuf::well_known_types::timestamp::Timestamp>,
) -> Exit {
    Exit {
        status,
        at: system_time(at),
    }
}

pub fn process_to_pb(process: &Process) -> pb::Process {
    let (exit_status, exited_at) = match process.exit {
        Some(exit) => (exit.status, timestamp(exit.at)),
        None => (0, MessageField::none()),
    };
    pb::Process {
        container_id: process.container_id.clone(),
        exec_id: process.exec_id.clone(),
        pid: process.pid,
        status: status_to_pb(process.status).into(),
        stdin: process.stdio.stdin.clone(),
        stdout: process.stdio.stdout.clone(),
        stderr: process.stdio.stderr.clone(),
        terminal: process.stdio.terminal,
        exit_status,
        exited_at,
        ..Default::default()
    }
}

pub fn process_from_pb(process: &pb::Process) -> Process {
    let status = status_from_pb(process.status);
    Process {
        container_id: process.container_id.clone(),
        exec_id: process.exec_id.clone(),
        pid: process.pid,
        status,
        stdio: Stdio {
            stdin: process.stdin.clone(),
            stdout: process.stdout.clone(),
            stderr: process.stderr.clone(),
            terminal: process.terminal,
        },
        exit: (status == Status::Stopped)
            .then(|| exit_from_pb(process.exit_status, &process.exited_at)),
    }
}

pub fn create_to_pb(request: &CreateTask) -> pb::CreateTaskRequest {
    pb::CreateTaskRequest {
        container_id: request.container_id.clone(),
        rootfs: request.rootfs.iter().map(mount_to_pb).collect(),
        stdin: request.stdio.stdin.clone(),
        stdout: request.stdio.stdout.clone(),
        stderr: request.stdio.stderr.clone(),
        terminal: request.stdio.terminal,
        options: request.options.as_ref().map(any_to_pb).into(),
        ..Default::default()
    }
}

pub fn create_from_pb(request: &pb::CreateTaskRequest) -> CreateTask {
    CreateTask {
        container_id: request.container_id.clone(),
        rootfs: request.rootfs.iter().map(mount_from_pb).collect(),
        stdio: Stdio {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        },
        options: request.options.as_ref().map(any_from_pb),
    }
}

/// The OCI process of an exec travels as an Any of this type, JSON inside
/// (containerd's own choice for the same field).
pub const PROCESS_SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
/// The type of the JSON `LinuxResources` an update carries.
pub const RESOURCES_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";

pub fn exec_to_pb(request: &ExecProcess) -> pb::ExecProcessRequest {
    pb::ExecProcessRequest {
        container_id: request.container_id.clone(),
        exec_id: request.exec_id.clone(),
        stdin: request.stdio.stdin.clone(),
        stdout: request.stdio.stdout.clone(),
        stderr: request.stdio.stderr.clone(),
        terminal: request.stdio.terminal,
        spec: MessageField::some(berth_api::protobuf::well_known_types::any::Any {
            type_url: PROCESS_SPEC_TYPE.to_string(),
            value: request.spec.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn exec_from_pb(request: &pb::ExecProcessRequest) -> ExecProcess {
    ExecProcess {
        container_id: request.container_id.clone(),
        exec_id: request.exec_id.clone(),
        stdio: Stdio {
            stdin: request.stdin.clone(),
            stdout: request.stdout.clone(),
            stderr: request.stderr.clone(),
            terminal: request.terminal,
        },
        spec: request
            .spec
            .as_ref()
            .map(|spec| spec.value.clone())
            .unwrap_or_default(),
    }
}

pub fn kill_to_pb(request: &KillProcess) -> pb::KillRequest {
    pb::KillRequest {
        container_id: request.container_id.clone(),
        exec_id: request.exec_id.clone(),
        signal: request.signal,
        all: request.all,
        ..Default::default()
    }
}

pub fn kill_from_pb(request: &pb::KillRequest) -> KillProcess {
    KillProcess {
        container_id: request.container_id.clone(),
        exec_id: request.exec_id.clone(),
        signal: request.signal,
        all: request.all,
    }
}

pub fn deleted_to_pb(deleted: &Deleted) -> pb::DeleteResponse {
    pb::DeleteResponse {
        id: deleted.id.clone(),
        pid: deleted.pid,
        exit_status: deleted.exit.status,
        exited_at: timestamp(deleted.exit.at),
        ..Default::default()
    }
}

pub fn deleted_from_pb(deleted: &pb::DeleteResponse) -> Deleted {
    Deleted {
        id: deleted.id.clone(),
        pid: deleted.pid,
        exit: exit_from_pb(deleted.exit_status, &deleted.exited_at),
    }
}

pub fn pid_to_pb(pid: &ProcessPid) -> pb::ProcessInfo {
    pb::ProcessInfo {
        pid: pid.pid,
        exec_id: pid.exec_id.clone(),
        ..Default::default()
    }
}

pub fn pid_from_pb(pid: &pb::ProcessInfo) -> ProcessPid {
    ProcessPid {
        pid: pid.pid,
        exec_id: pid.exec_id.clone(),
    }
}

pub fn metric_to_pb(metric: &Metric) -> pb::Metric {
    pb::Metric {
        container_id: metric.container_id.clone(),
        timestamp: timestamp(metric.at),
        data: MessageField::some(any_to_pb(&metric.data)),
        ..Default::default()
    }
}

pub fn metric_from_pb(metric: &pb::Metric) -> Metric {
    Metric {
        container_id: metric.container_id.clone(),
        at: system_time(&metric.timestamp),
        data: metric.data.as_ref().map(any_from_pb).unwrap_or_default(),
    }
}

pub fn update_to_pb(request: &UpdateTask) -> pb::UpdateTaskRequest {
    pb::UpdateTaskRequest {
        container_id: request.container_id.clone(),
        resources: request
            .resources
            .as_ref()
            .map(|json| berth_api::protobuf::well_known_types::any::Any {
                type_url: RESOURCES_TYPE.to_string(),
                value: json.clone(),
                ..Default::default()
            })
            .into(),
        annotations: request
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        ..Default::default()
    }
}

pub fn update_from_pb(request: &pb::UpdateTaskRequest) -> UpdateTask {
    UpdateTask {
        container_id: request.container_id.clone(),
        resources: request.resources.as_ref().map(|any| any.value.clone()),
        annotations: request
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}
