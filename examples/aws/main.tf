# The AWS side of examples/aws/spec.yaml as Terraform: an IAM OIDC identity provider for the
# cluster's issuer and the role keyless assumes, trusting only tokens with aud
# sts.amazonaws.com (what keyless requests for the aws target) and the trainer service
# account's sub. The same trust policy as JSON: trust-policy.json (tests/core check that the
# two agree, and run both through a verifying STS).
#
#   terraform init && terraform apply -var oidc_issuer_host=oidc.eks.REGION.amazonaws.com/id/ID

terraform {
  required_providers {
    # 5.81 made thumbprint_list optional: AWS checks the issuer's TLS certificate itself
    aws = { source = "hashicorp/aws", version = ">= 5.81" }
  }
}

variable "oidc_issuer_host" {
  description = "The token issuer (iss) without https://: the EKS cluster's OIDC issuer."
  type        = string
  default     = "oidc.eks.us-east-1.amazonaws.com/id/EXAMPLED539D4633E53DE1B71EXAMPLE"
}

variable "audience" {
  description = "The aud keyless requests for the aws target (target.aws.audience)."
  type        = string
  default     = "sts.amazonaws.com"
}

variable "subject" {
  description = "The sub of the workers' tokens: the Kubernetes service account."
  type        = string
  default     = "system:serviceaccount:ml:trainer"
}

resource "aws_iam_openid_connect_provider" "cluster" {
  url            = "https://${var.oidc_issuer_host}"
  client_id_list = [var.audience]
}

data "aws_iam_policy_document" "trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [aws_iam_openid_connect_provider.cluster.arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer_host}:aud"
      values   = [var.audience]
    }
    condition {
      test     = "StringEquals"
      variable = "${var.oidc_issuer_host}:sub"
      values   = [var.subject]
    }
  }
}

resource "aws_iam_role" "ml_training" {
  name                 = "ml-training"
  assume_role_policy   = data.aws_iam_policy_document.trust.json
  max_session_duration = 3600 # spec.yaml's duration_seconds must not exceed this
}

# What spec.yaml's session policies narrow: each rank may read only its own shard.
resource "aws_iam_role_policy" "read_training_data" {
  name = "read-training-data"
  role = aws_iam_role.ml_training.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      { Effect = "Allow", Action = ["s3:GetObject"], Resource = ["arn:aws:s3:::training-data/*"] },
      { Effect = "Allow", Action = ["s3:ListBucket"], Resource = ["arn:aws:s3:::training-data"] },
    ]
  })
}

output "role_arn" {
  description = "target.aws.role_arn in spec.yaml"
  value       = aws_iam_role.ml_training.arn
}
