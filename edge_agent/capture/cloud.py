"""The S3 settings of a configuration: checked at start-up, turned into a client when used.

Credentials, first match wins:
  1. edge_agent_s3_access_key_id + edge_agent_s3_secret_access_key (+ ..._session_token);
  2. the AWS IoT credentials provider, when sagemaker_edge_provider_aws_iot_cred_endpoint is
     set (with the device certificate and key);
  3. AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN) in the environment.
"""
from __future__ import annotations

import os
from typing import Mapping

from edge_agent.config import AgentConfig, ConfigError


def _iot_configured(config: AgentConfig) -> bool:
    return bool(config.sagemaker_edge_provider_aws_iot_cred_endpoint)


def iot_role_alias(config: AgentConfig) -> str:
    """The role alias of the IoT credentials provider: configured, or the one the original
    service created for the fleet (SageMakerEdge-<fleet name>); empty if neither is known."""
    if config.edge_agent_iot_role_alias:
        return config.edge_agent_iot_role_alias
    fleet = config.sagemaker_edge_core_device_fleet_name
    return f"SageMakerEdge-{fleet}" if fleet else ""


def check_cloud(config: AgentConfig, why: str, environ: Mapping[str, str] = os.environ) -> None:
    """ConfigError naming every setting that `why` (what needs the bucket) is missing."""
    missing = []
    if not config.sagemaker_edge_provider_s3_bucket_name:
        missing.append("the bucket (sagemaker_edge_provider_s3_bucket_name)")
    if not (config.edge_agent_s3_endpoint_url or config.sagemaker_edge_core_region):
        missing.append("the endpoint (edge_agent_s3_endpoint_url, or sagemaker_edge_core_region "
                       "for AWS S3)")
    static = (config.edge_agent_s3_access_key_id, config.edge_agent_s3_secret_access_key)
    if any(static) and not all(static):
        missing.append("the other half of the key pair (edge_agent_s3_access_key_id and "
                       "edge_agent_s3_secret_access_key go together)")
    elif not any(static) and _iot_configured(config):
        endpoint = config.sagemaker_edge_provider_aws_iot_cred_endpoint
        if not config.sagemaker_edge_provider_aws_cert_file:
            missing.append("the device certificate (sagemaker_edge_provider_aws_cert_file)")
        if not config.sagemaker_edge_provider_aws_cert_pk_file:
            missing.append("the device key (sagemaker_edge_provider_aws_cert_pk_file)")
        if "/role-aliases/" not in endpoint and not iot_role_alias(config):
            missing.append("the role alias (edge_agent_iot_role_alias, "
                           "sagemaker_edge_core_device_fleet_name for SageMakerEdge-<fleet>, "
                           "or a full sagemaker_edge_provider_aws_iot_cred_endpoint url)")
    elif not any(static) and not (environ.get("AWS_ACCESS_KEY_ID") and
                                  environ.get("AWS_SECRET_ACCESS_KEY")):
        missing.append("credentials (edge_agent_s3_access_key_id and "
                       "edge_agent_s3_secret_access_key, AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY in the environment, or the IoT credentials "
                       "provider: sagemaker_edge_provider_aws_iot_cred_endpoint with the "
                       "device certificate and key)")
    if missing:
        raise ConfigError(f"{why} needs " + "; ".join(missing))


def credentials_provider(config: AgentConfig, environ: Mapping[str, str] = os.environ):
    from edge_agent.capture.s3 import Credentials, StaticCredentials

    if config.edge_agent_s3_access_key_id:
        return StaticCredentials(Credentials(config.edge_agent_s3_access_key_id,
                                             config.edge_agent_s3_secret_access_key,
                                             config.edge_agent_s3_session_token))
    if _iot_configured(config):
        from edge_agent.capture.iot_credentials import IotCredentials, credentials_url
        return IotCredentials(
            credentials_url(config.sagemaker_edge_provider_aws_iot_cred_endpoint,
                            iot_role_alias(config)),
            config.edge_agent_iot_thing_name or config.sagemaker_edge_core_device_name,
            config.sagemaker_edge_provider_aws_cert_file,
            config.sagemaker_edge_provider_aws_cert_pk_file,
            config.sagemaker_edge_provider_aws_ca_cert_file,
            timeout=config.edge_agent_s3_timeout_seconds)
    return StaticCredentials(Credentials(environ["AWS_ACCESS_KEY_ID"],
                                         environ["AWS_SECRET_ACCESS_KEY"],
                                         environ.get("AWS_SESSION_TOKEN", "")))


def s3_client(config: AgentConfig, environ: Mapping[str, str] = os.environ):
    """The S3 client of a checked configuration (imports requests)."""
    from edge_agent.capture.s3 import S3Client

    return S3Client(config.sagemaker_edge_provider_s3_bucket_name,
                    config.sagemaker_edge_core_region, credentials_provider(config, environ),
                    endpoint_url=config.edge_agent_s3_endpoint_url,
                    addressing_style=config.edge_agent_s3_addressing_style,
                    timeout=config.edge_agent_s3_timeout_seconds)
