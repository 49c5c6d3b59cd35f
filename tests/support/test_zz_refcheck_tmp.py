import boto3
from botocore import UNSIGNED
from botocore.config import Config

def test_reference_idp_through_front(reference_idp, aws_stack):
    aud = "https://sts.amazonaws.com"
    aws_stack.register_oidc_provider(reference_idp.issuer, [aud])
    role = aws_stack.create_role("ref-check", issuer_url=reference_idp.issuer, aud=aud, sub="trainer")
    tok = reference_idp.issue("trainer", audience=aud)
    tok = getattr(tok, "access_token", tok)
    if isinstance(tok, dict): tok = tok["access_token"]
    sts = boto3.session.Session().client("sts", region_name="us-east-1", endpoint_url=aws_stack.sts_url,
        config=Config(signature_version=UNSIGNED))
    out = sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="ref", WebIdentityToken=tok)
    s3 = aws_stack.client("s3", out["Credentials"])
    s3.put_object(Bucket=aws_stack.bucket, Key="ref", Body=b"x")
    print(out["AssumedRoleUser"], aws_stack.front.accepted[-1])
    bad = reference_idp.issue("intruder", audience=aud)
    bad = getattr(bad, "access_token", bad)
    import pytest
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError, match="AccessDenied"):
        sts.assume_role_with_web_identity(RoleArn=role, RoleSessionName="ref", WebIdentityToken=bad)
