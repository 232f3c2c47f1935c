# Plans the example against a mocked kubernetes provider: the wiring of the root variables
# into the module. `tofu test` in terraform/examples/kubernetes.

mock_provider "kubernetes" {}

variables {
  image       = "registry.example.com/levee@sha256:1111111111111111111111111111111111111111111111111111111111111111"
  region      = "eu-west"
  cluster_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
  admin_token = "example-admin-token-0123"
}

run "the_example_plans_with_its_defaults" {
  command = plan

  assert {
    condition     = output.node_names == ["levee-0", "levee-1", "levee-2"]
    error_message = "three nodes by default"
  }
  assert {
    condition     = output.statefulset_name == "levee" && output.hpa_name == "levee"
    error_message = "the StatefulSet and its HPA are named levee"
  }
  assert {
    condition     = output.admin_service_dns == "levee-admin.levee.svc.cluster.local"
    error_message = "the admin Service's DNS name"
  }
}

run "load_balancer_addressing_reaches_the_module" {
  command = plan

  variables {
    client_addressing = "load_balancer"
    max_nodes         = 4
    load_balancer_ips = ["198.51.100.1", "198.51.100.2", "198.51.100.3", "198.51.100.4"]
  }

  assert {
    condition     = length(output.client_addresses) == 4 && output.client_addresses["levee-3"] == "198.51.100.4:4433"
    error_message = "every possible node gets its load balancer's address"
  }
}
