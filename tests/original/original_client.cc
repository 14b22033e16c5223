// An application written in C++ for the original agent, as its example client was: gRPC++
// stubs generated from tests/original/agent.proto, SysV segments made with shmget/shmat and
// made owner-read-only with shmctl(IPC_SET). It knows nothing of edge-agent.
//
//   original_client SOCKET MODEL_PATH CAPTURE_ID
//
// Runs every RPC once, predictions by byte_data and through a 0400 segment, one capture; one
// line per call: "<call> <gRPC status code number> <what it returned or the error message>".
#include <grpcpp/grpcpp.h>
#include <sys/ipc.h>
#include <sys/shm.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "agent.grpc.pb.h"

using namespace AWS::SageMaker::Edge;

namespace {

const float kA[4] = {1, 2, 3, 4};
const float kB[4] = {10, 20, 30, 40};

void Report(const std::string& call, const grpc::Status& status, const std::string& result) {
  std::cout << call << " " << status.error_code() << " "
            << (status.ok() ? result : status.error_message()) << std::endl;
}

std::string Floats(const std::string& bytes) {
  std::ostringstream out;
  std::vector<float> values(bytes.size() / sizeof(float));
  std::memcpy(values.data(), bytes.data(), values.size() * sizeof(float));
  for (size_t i = 0; i < values.size(); i++) out << (i ? "," : "") << values[i];
  return out.str();
}

std::string Outputs(const PredictResponse& response) {
  std::string out;
  for (const Tensor& t : response.tensors())
    out += t.tensor_metadata().name() + "=" + Floats(t.byte_data()) + ";";
  return out;
}

Tensor* AddTensor(google::protobuf::RepeatedPtrField<Tensor>* tensors, const char* name) {
  Tensor* t = tensors->Add();
  t->mutable_tensor_metadata()->set_name(name);
  t->mutable_tensor_metadata()->set_data_type(FLOAT32);
  t->mutable_tensor_metadata()->add_shape(1);
  t->mutable_tensor_metadata()->add_shape(4);
  return t;
}

// A private segment holding a then b, made read-only for its owner after writing, as the
// original's example client does.
int MakeSegment() {
  int shmid = shmget(IPC_PRIVATE, sizeof(kA) + sizeof(kB), IPC_CREAT | 0600);
  if (shmid < 0) return -1;
  char* p = static_cast<char*>(shmat(shmid, nullptr, 0));
  if (p == reinterpret_cast<char*>(-1)) return -1;
  std::memcpy(p, kA, sizeof(kA));
  std::memcpy(p + sizeof(kA), kB, sizeof(kB));
  shmdt(p);
  struct shmid_ds ds;
  shmctl(shmid, IPC_STAT, &ds);
  ds.shm_perm.mode = 0400;
  shmctl(shmid, IPC_SET, &ds);
  return shmid;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: original_client SOCKET MODEL_PATH CAPTURE_ID" << std::endl;
    return 2;
  }
  auto channel = grpc::CreateChannel(std::string("unix://") + argv[1],
                                     grpc::InsecureChannelCredentials());
  std::unique_ptr<Agent::Stub> stub = Agent::NewStub(channel);

  {
    grpc::ClientContext context;
    LoadModelRequest request;
    request.set_name("add");
    request.set_url(argv[2]);
    LoadModelResponse response;
    grpc::Status status = stub->LoadModel(&context, request, &response);
    Report("LoadModel", status, response.model().name() + " inputs=" +
           std::to_string(response.model().input_tensor_metadatas_size()));
  }
  {
    grpc::ClientContext context;
    ListModelsResponse response;
    grpc::Status status = stub->ListModels(&context, ListModelsRequest(), &response);
    std::string names;
    for (const Model& m : response.models()) names += m.name() + ";";
    Report("ListModels", status, names);
  }
  {
    grpc::ClientContext context;
    DescribeModelRequest request;
    request.set_name("add");
    DescribeModelResponse response;
    grpc::Status status = stub->DescribeModel(&context, request, &response);
    Report("DescribeModel", status, response.model().url());
  }
  {
    grpc::ClientContext context;
    PredictRequest request;
    request.set_name("add");
    AddTensor(request.mutable_tensors(), "a")->set_byte_data(kA, sizeof(kA));
    AddTensor(request.mutable_tensors(), "b")->set_byte_data(kB, sizeof(kB));
    PredictResponse response;
    grpc::Status status = stub->Predict(&context, request, &response);
    Report("Predict", status, Outputs(response));
  }
  {
    int shmid = MakeSegment();
    grpc::ClientContext context;
    PredictRequest request;
    request.set_name("add");
    SharedMemoryHandle* a = AddTensor(request.mutable_tensors(), "a")->mutable_shared_memory_handle();
    a->set_segment_id(shmid);
    a->set_offset(0);
    a->set_size(sizeof(kA));
    SharedMemoryHandle* b = AddTensor(request.mutable_tensors(), "b")->mutable_shared_memory_handle();
    b->set_segment_id(shmid);
    b->set_offset(sizeof(kA));
    b->set_size(sizeof(kB));
    PredictResponse response;
    grpc::Status status = stub->Predict(&context, request, &response);
    Report("PredictShm", status, Outputs(response));
    shmctl(shmid, IPC_RMID, nullptr);
  }
  {
    grpc::ClientContext context;
    CaptureDataRequest request;
    request.set_model_name("add");
    request.set_capture_id(argv[3]);
    request.mutable_inference_timestamp()->set_seconds(1700000000);
    AddTensor(request.mutable_input_tensors(), "a")->set_byte_data(kA, sizeof(kA));
    AddTensor(request.mutable_output_tensors(), "sum")->set_byte_data(kB, sizeof(kB));
    AuxilaryData* aux = request.add_inputs();
    aux->set_name("note");
    aux->set_encoding(JSON);
    aux->set_byte_data("{\"k\": 1}");
    CaptureDataResponse response;
    Report("CaptureData", stub->CaptureData(&context, request, &response), "");
  }
  {
    grpc::ClientContext context;
    GetCaptureDataStatusRequest request;
    request.set_capture_id(argv[3]);
    GetCaptureDataStatusResponse response;
    grpc::Status status = stub->GetCaptureDataStatus(&context, request, &response);
    Report("GetCaptureDataStatus", status, CaptureDataStatus_Name(response.status()));
  }
  {
    grpc::ClientContext context;
    DescribeModelRequest request;
    request.set_name("nope");
    DescribeModelResponse response;
    Report("DescribeMissing", stub->DescribeModel(&context, request, &response), "");
  }
  {
    grpc::ClientContext context;
    PredictRequest request;
    request.set_name("add");
    AddTensor(request.mutable_tensors(), "a")->set_byte_data("xyz", 3);
    PredictResponse response;
    Report("PredictBad", stub->Predict(&context, request, &response), "");
  }
  {
    grpc::ClientContext context;
    UnLoadModelRequest request;
    request.set_name("add");
    UnLoadModelResponse response;
    Report("UnLoadModel", stub->UnLoadModel(&context, request, &response), "");
  }
  return 0;
}
