-- Orthanc: forward every chest radiograph (CR/DX) that arrives to the cxrdx node, which sends
-- its SR and Grad-CAM heatmap SEG back into the same study. Results that come back
-- from the node (calling AE title CXRDX) are not forwarded again.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if (tags['Modality'] == 'CR' or tags['Modality'] == 'DX') and origin['RemoteAet'] ~= 'CXRDX' then
    SendToModality(instanceId, 'cxrdx')
  end
end
