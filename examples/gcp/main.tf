# The GCP side of examples/gcp/spec.yaml as Terraform: a workload identity pool and an OIDC
# provider for the cluster's issuer that admits only the trainer service account's tokens,
# and the right for that federated principal to impersonate the trainer service account.
# tests/core check that the audience keyless requests and the subject agree with spec.yaml,
# and run a matching (and a wrong) token through a verifying STS built from this file.
#
#   terraform init && terraform apply -var project_id=my-project -var project_number=123...

terraform {
  required_providers {
    google = { source = "hashicorp/google", version = ">= 5.0" }
  }
}

variable "project_id" {
  type    = string
  default = "my-project"
}

variable "project_number" {
  description = "The project's number (not its id): it is part of the provider's name."
  type        = string
  default     = "123456789012"
}

variable "issuer_url" {
  description = "The token issuer (iss): the cluster's OIDC issuer URL."
  type        = string
  default     = "https://oidc.example.com"
}

variable "subject" {
  description = "The sub of the workers' tokens: the Kubernetes service account."
  type        = string
  default     = "system:serviceaccount:ml:trainer"
}

resource "google_iam_workload_identity_pool" "ml" {
  project                   = var.project_id
  workload_identity_pool_id = "ml-pool"
  display_name              = "ML training workers"
}

resource "google_iam_workload_identity_pool_provider" "k8s" {
  project                            = var.project_id
  workload_identity_pool_id          = google_iam_workload_identity_pool.ml.workload_identity_pool_id
  workload_identity_pool_provider_id = "k8s"
  attribute_mapping = {
    "google.subject" = "assertion.sub"
  }
  # only the trainer service account's tokens are exchanged at all
  attribute_condition = "assertion.sub == '${var.subject}'"
  oidc {
    issuer_uri = var.issuer_url
    # no allowed_audiences: the provider then accepts its own full resource name as aud,
    # "https:" + spec.yaml's target.gcp.audience, which is what keyless requests by default
  }
}

resource "google_service_account" "trainer" {
  project      = var.project_id
  account_id   = "trainer"
  display_name = "ML trainer (impersonated by keyless workers)"
}

# The federated principal of exactly that subject may impersonate the service account
# (principalSet://iam.googleapis.com/<pool>/attribute.NAME/VALUE would grant a group instead).
resource "google_service_account_iam_member" "trainer_federation" {
  service_account_id = google_service_account.trainer.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "principal://iam.googleapis.com/projects/${var.project_number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.ml.workload_identity_pool_id}/subject/${var.subject}"
}

output "keyless_audience" {
  description = "target.gcp.audience in spec.yaml: the provider's full resource name"
  value       = "//iam.googleapis.com/projects/${var.project_number}/locations/global/workloadIdentityPools/${google_iam_workload_identity_pool.ml.workload_identity_pool_id}/providers/${google_iam_workload_identity_pool_provider.k8s.workload_identity_pool_provider_id}"
}

output "keyless_service_account" {
  description = "target.gcp.service_account in spec.yaml"
  value       = google_service_account.trainer.email
}
